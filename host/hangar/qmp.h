// QMP: message framing and an asynchronous, non-blocking client state machine.
//
// The client owns a connected socket but no event loop: the owner calls handle_readable(),
// handle_writable() and check_timeouts() when the loop says so, and asks wants_write() to know
// whether to watch for EPOLLOUT. That keeps it testable against a fake server on a socketpair.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "error_or.h"

namespace hangar {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// Limits on what a QEMU (and through it, a guest) may send hangar, which runs as root and
// manages every VM: one hostile QEMU must cost its own VM, never hangar.
//
// kMaxMessage: the largest reply hangar reads is one page of x-blimp-balloon-query-hints, at most
// 65536 hints (kHintPageMax). A hint as QEMU prints it is at most 123 bytes even with 20-digit
// numbers ({"pfn": N, "npages": N, "hash": "<16 hex>", "zero": false, "marked": false}, ), so a
// page is at most ~8 MiB (realistic pfns: ~6.5 MiB; qmp_test.cpp measures the worst case). 16 MiB
// leaves 2x margin; every other reply hangar reads is under 4 KiB.
inline constexpr size_t kQmpMaxMessage = 16u << 20;
// kMaxDepth: the deepest reply hangar reads nests 4 levels ({"return": {"hints": [{...}]}}). A
// deeper message is rejected before a DOM is built (copying, dumping and destroying a DOM recurse,
// so a few million levels would overflow hangar's stack).
inline constexpr size_t kQmpMaxDepth = 32;

// The nesting depth of JSON text ('[' and '{' outside strings), stopping as soon as it passes
// `limit` (then returns limit + 1). A cheap scan: no allocation, no recursion.
size_t json_nesting_depth(std::string_view text, size_t limit);

// Splits the byte stream into messages. QEMU ends every message with "\r\n" and JSON strings
// cannot hold a raw newline, so a newline is a reliable boundary; a size cap keeps a broken or
// hostile peer from growing the buffer without bound.
class QmpFramer {
public:
    static constexpr size_t kMaxMessage = kQmpMaxMessage;

    void feed(std::string_view bytes) { buffer_.append(bytes.data(), bytes.size()); }
    // The next complete, non-blank line, without its line ending. Sets overflow() and returns
    // nothing once a message grows past kMaxMessage without a newline.
    std::optional<std::string> next();
    bool overflow() const { return overflow_; }
    size_t buffered() const { return buffer_.size() - start_; }

private:
    std::string buffer_;
    size_t start_ = 0;
    bool overflow_ = false;
};

struct QmpMessage {
    enum class Kind { Greeting, Return, Error, Event };
    Kind kind = Kind::Return;
    std::optional<uint64_t> id;
    json value;               // return value, event data, or the greeting's "QMP" object
    std::string event;        // Event
    std::string error_class;  // Error
    std::string error_desc;   // Error
};

// Parses and classifies one framed line; the error says what is wrong with it.
ErrorOr<QmpMessage> parse_qmp_message(std::string_view line);

struct QmpReply {
    bool ok = false;
    json value;               // the "return" value when ok
    std::string error_class;  // QEMU's error class, or "Timeout" / "Disconnected"
    std::string error_desc;
    std::string describe() const { return error_class + ": " + error_desc; }
};

class QmpClient {
public:
    enum class State { Idle, AwaitGreeting, Negotiating, Ready, Closed };
    using ReplyFn = std::function<void(const QmpReply&)>;

    struct Callbacks {
        std::function<void()> on_ready;
        std::function<void(const std::string& event, const json& data)> on_event;
        std::function<void(const std::string& why)> on_closed;
    };

    explicit QmpClient(Callbacks callbacks, Clock::duration timeout = std::chrono::seconds(10));
    ~QmpClient();
    QmpClient(const QmpClient&) = delete;
    QmpClient& operator=(const QmpClient&) = delete;

    // Takes ownership of a connected socket (made non-blocking here); waits for the greeting.
    void attach(int fd);
    // Queues a command; the reply callback runs exactly once (reply, error, timeout or close).
    // Commands issued before negotiation completes are sent once it does.
    void execute(const std::string& command, json arguments, ReplyFn on_reply);
    void execute(const std::string& command, ReplyFn on_reply) { execute(command, json(), std::move(on_reply)); }

    void handle_readable();
    void handle_writable();
    bool wants_write() const { return state_ != State::Closed && out_pos_ < out_.size(); }
    // Fails commands that have waited past the timeout; a negotiation that times out closes.
    void check_timeouts(Clock::time_point now);
    void close(const std::string& why);

    State state() const { return state_; }
    int fd() const { return fd_; }
    size_t pending() const { return pending_.size() + queued_.size(); }
    const json& greeting() const { return greeting_; }
    uint64_t protocol_warnings() const { return protocol_warnings_; }

private:
    struct Pending {
        std::string command;
        ReplyFn on_reply;
        Clock::time_point deadline;
    };
    struct Queued {
        std::string command;
        json arguments;
        ReplyFn on_reply;
        Clock::time_point deadline;
    };

    void send_now(const std::string& command, const json& arguments, ReplyFn on_reply, Clock::time_point deadline);
    void dispatch(QmpMessage&& msg);
    void flush();

    Callbacks callbacks_;
    Clock::duration timeout_;
    int fd_ = -1;
    State state_ = State::Idle;
    QmpFramer framer_;
    std::string out_;
    size_t out_pos_ = 0;
    uint64_t next_id_ = 1;
    std::map<uint64_t, Pending> pending_;
    std::deque<Queued> queued_;
    json greeting_;
    Clock::time_point negotiate_deadline_{};
    uint64_t protocol_warnings_ = 0;
};

// Connects to a unix socket without blocking. Returns the fd, or -1 with errno set; ENOENT and
// ECONNREFUSED mean "QEMU is not listening yet".
int connect_unix(const std::string& path);
// Creates a listening unix socket at `path` with mode 0600 (close-on-exec); returns its fd.
ErrorOr<int> listen_unix(const std::string& path);

}  // namespace hangar
