#include "qmp.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>

namespace hangar {

size_t json_nesting_depth(std::string_view text, size_t limit) {
    size_t depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
            continue;
        }
        switch (c) {
            case '"': in_string = true; break;
            case '[':
            case '{':
                if (++depth > deepest) {
                    deepest = depth;
                    if (deepest > limit) return limit + 1;
                }
                break;
            case ']':
            case '}':
                if (depth) --depth;  // unbalanced text is the parser's to reject
                break;
            default: break;
        }
    }
    return deepest;
}

std::optional<std::string> QmpFramer::next() {
    while (!overflow_) {
        size_t nl = buffer_.find('\n', start_);
        if (nl == std::string::npos) {
            if (buffer_.size() - start_ > kMaxMessage) overflow_ = true;
            // Compact so a long-lived connection does not keep every consumed byte.
            if (start_ > 0 && start_ >= buffer_.size() / 2) {
                buffer_.erase(0, start_);
                start_ = 0;
            }
            return std::nullopt;
        }
        if (nl - start_ > kMaxMessage) {
            overflow_ = true;
            return std::nullopt;
        }
        std::string line = buffer_.substr(start_, nl - start_);
        start_ = nl + 1;
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
        size_t first = line.find_first_not_of(" \t\r");
        if (first == std::string::npos) continue;
        if (first) line.erase(0, first);
        return line;
    }
    return std::nullopt;
}

ErrorOr<QmpMessage> parse_qmp_message(std::string_view line) {
    if (line.size() > kQmpMaxMessage) {
        return Error{"message of " + std::to_string(line.size()) + " bytes, larger than the " +
                     std::to_string(kQmpMaxMessage) + "-byte limit"};
    }
    // Before the DOM exists: nlohmann builds it iteratively, but copies, dumps and destroys it
    // recursively.
    if (json_nesting_depth(line, kQmpMaxDepth) > kQmpMaxDepth) {
        return Error{"JSON nested deeper than " + std::to_string(kQmpMaxDepth) +
                     " levels: " + std::string(line.substr(0, 40))};
    }
    json doc = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) {
        return Error{"not JSON: " + std::string(line.substr(0, 120))};
    }
    if (!doc.is_object()) {
        return Error{"not a JSON object: " + std::string(line.substr(0, 120))};
    }
    QmpMessage msg;
    if (auto it = doc.find("id"); it != doc.end()) {
        // We only ever send unsigned integer ids; anything else is not an answer to us.
        if (!it->is_number_unsigned()) {
            return Error{"reply id is not one of ours: " + it->dump().substr(0, 120)};
        }
        msg.id = it->get<uint64_t>();
    }
    if (auto it = doc.find("QMP"); it != doc.end()) {
        msg.kind = QmpMessage::Kind::Greeting;
        msg.value = std::move(*it);
        return msg;
    }
    if (auto it = doc.find("return"); it != doc.end()) {
        msg.kind = QmpMessage::Kind::Return;
        msg.value = std::move(*it);
        return msg;
    }
    if (auto it = doc.find("error"); it != doc.end()) {
        msg.kind = QmpMessage::Kind::Error;
        if (!it->is_object()) {
            return Error{"error member is not an object"};
        }
        auto cls = it->find("class");
        auto desc = it->find("desc");
        msg.error_class = cls != it->end() && cls->is_string() ? cls->get<std::string>() : "GenericError";
        msg.error_desc = desc != it->end() && desc->is_string() ? desc->get<std::string>() : it->dump();
        // An error text ends up in logs and summary.json: a page of it says all QEMU has to say.
        if (msg.error_desc.size() > 4096) msg.error_desc = msg.error_desc.substr(0, 4096) + "...";
        return msg;
    }
    if (auto it = doc.find("event"); it != doc.end()) {
        if (!it->is_string()) {
            return Error{"event name is not a string"};
        }
        msg.kind = QmpMessage::Kind::Event;
        msg.event = it->get<std::string>();
        if (auto d = doc.find("data"); d != doc.end()) msg.value = std::move(*d);
        return msg;
    }
    return Error{"neither greeting, return, error nor event: " + std::string(line.substr(0, 120))};
}

QmpClient::QmpClient(Callbacks callbacks, Clock::duration timeout)
    : callbacks_(std::move(callbacks)), timeout_(timeout) {}

QmpClient::~QmpClient() {
    if (fd_ >= 0) ::close(fd_);
}

void QmpClient::attach(int fd) {
    fd_ = fd;
    int flags = fcntl(fd_, F_GETFL);
    if (flags >= 0) fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
    state_ = State::AwaitGreeting;
    negotiate_deadline_ = Clock::now() + timeout_;
}

void QmpClient::execute(const std::string& command, json arguments, ReplyFn on_reply) {
    const auto deadline = Clock::now() + timeout_;
    if (state_ == State::Closed) {
        QmpReply r;
        r.error_class = "Disconnected";
        r.error_desc = "QMP connection is closed";
        if (on_reply) on_reply(r);
        return;
    }
    if (state_ != State::Ready) {
        queued_.push_back({command, std::move(arguments), std::move(on_reply), deadline});
        return;
    }
    send_now(command, arguments, std::move(on_reply), deadline);
}

void QmpClient::send_now(const std::string& command, const json& arguments, ReplyFn on_reply,
                         Clock::time_point deadline) {
    const uint64_t id = next_id_++;
    json msg = {{"execute", command}, {"id", id}};
    if (!arguments.is_null() && !(arguments.is_object() && arguments.empty())) msg["arguments"] = arguments;
    out_ += msg.dump();
    out_ += "\r\n";
    pending_[id] = Pending{command, std::move(on_reply), deadline};
    flush();
}

void QmpClient::flush() {
    while (fd_ >= 0 && state_ != State::Closed && out_pos_ < out_.size()) {
        ssize_t n = ::send(fd_, out_.data() + out_pos_, out_.size() - out_pos_, MSG_NOSIGNAL);
        if (n > 0) {
            out_pos_ += static_cast<size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        close(std::string("QMP write failed: ") + std::strerror(errno));
        return;
    }
    if (out_pos_ == out_.size()) {
        out_.clear();
        out_pos_ = 0;
    }
}

void QmpClient::handle_writable() { flush(); }

void QmpClient::handle_readable() {
    char buf[65536];
    while (state_ != State::Closed) {
        ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n > 0) {
            framer_.feed(std::string_view(buf, static_cast<size_t>(n)));
            while (state_ != State::Closed) {
                auto line = framer_.next();
                if (!line) break;
                auto msg = parse_qmp_message(*line);
                if (msg.is_error()) {
                    close("QMP protocol error: " + msg.error().message);
                    return;
                }
                dispatch(msg.release_value());
            }
            if (framer_.overflow()) {
                close("QMP protocol error: message larger than " + std::to_string(QmpFramer::kMaxMessage) + " bytes");
                return;
            }
            continue;
        }
        if (n == 0) {
            close("QMP connection closed by QEMU");
            return;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        // A QEMU that exits with our last command unread resets the socket instead of closing
        // it: the same news as EOF (the fleet waits for the exit status before judging).
        if (errno == ECONNRESET) {
            close("QMP connection closed by QEMU (reset)");
            return;
        }
        close(std::string("QMP read failed: ") + std::strerror(errno));
        return;
    }
}

void QmpClient::dispatch(QmpMessage&& msg) {
    using Kind = QmpMessage::Kind;
    if (state_ == State::AwaitGreeting) {
        // QEMU broadcasts events to a socket monitor nobody has greeted yet, so one emitted while
        // we connect (RESUME after an incoming migration) can precede the greeting. Deliver it.
        if (msg.kind == Kind::Event) {
            if (callbacks_.on_event) callbacks_.on_event(msg.event, msg.value);
            return;
        }
        if (msg.kind != Kind::Greeting) {
            close("QMP protocol error: expected the greeting first");
            return;
        }
        greeting_ = std::move(msg.value);
        state_ = State::Negotiating;
        // Sent directly (not queued): it is the one command allowed before Ready.
        const uint64_t id = next_id_++;
        out_ += json({{"execute", "qmp_capabilities"}, {"id", id}}).dump() + "\r\n";
        pending_[id] = Pending{"qmp_capabilities",
                               [this](const QmpReply& r) {
                                   if (!r.ok) {
                                       close("QMP negotiation failed: " + r.describe());
                                       return;
                                   }
                                   state_ = State::Ready;
                                   while (!queued_.empty() && state_ == State::Ready) {
                                       Queued q = std::move(queued_.front());
                                       queued_.pop_front();
                                       send_now(q.command, q.arguments, std::move(q.on_reply), q.deadline);
                                   }
                                   if (state_ == State::Ready && callbacks_.on_ready) callbacks_.on_ready();
                               },
                               negotiate_deadline_};
        flush();
        return;
    }
    switch (msg.kind) {
        case Kind::Greeting:
            ++protocol_warnings_;  // a second greeting: harmless, ignore
            return;
        case Kind::Event:
            if (callbacks_.on_event) callbacks_.on_event(msg.event, msg.value);
            return;
        case Kind::Return:
        case Kind::Error: {
            // QMP answers in order, so a reply without an id belongs to the oldest command.
            auto it = msg.id ? pending_.find(*msg.id) : pending_.begin();
            if (it == pending_.end()) {
                ++protocol_warnings_;
                return;
            }
            Pending p = std::move(it->second);
            pending_.erase(it);
            QmpReply r;
            r.ok = msg.kind == Kind::Return;
            r.value = std::move(msg.value);
            r.error_class = std::move(msg.error_class);
            r.error_desc = std::move(msg.error_desc);
            if (p.on_reply) p.on_reply(r);
            return;
        }
    }
}

void QmpClient::check_timeouts(Clock::time_point now) {
    if (state_ == State::Closed) return;
    if ((state_ == State::AwaitGreeting) && now >= negotiate_deadline_) {
        close("QMP greeting not received in time");
        return;
    }
    std::vector<uint64_t> expired;
    for (auto& [id, p] : pending_)
        if (now >= p.deadline) expired.push_back(id);
    for (uint64_t id : expired) {
        auto it = pending_.find(id);
        if (it == pending_.end()) continue;
        Pending p = std::move(it->second);
        pending_.erase(it);
        QmpReply r;
        r.error_class = "Timeout";
        r.error_desc = p.command + ": no reply in time";
        if (p.on_reply) p.on_reply(r);
        if (state_ == State::Closed) return;
    }
}

void QmpClient::close(const std::string& why) {
    if (state_ == State::Closed) return;
    state_ = State::Closed;
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
    auto pending = std::move(pending_);
    pending_.clear();
    auto queued = std::move(queued_);
    queued_.clear();
    QmpReply r;
    r.error_class = "Disconnected";
    r.error_desc = why;
    for (auto& [id, p] : pending)
        if (p.on_reply) p.on_reply(r);
    for (auto& q : queued)
        if (q.on_reply) q.on_reply(r);
    if (callbacks_.on_closed) callbacks_.on_closed(why);
}

ErrorOr<int> listen_unix(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) {
        return Error{path + ": path too long for a unix socket"};
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return Error{std::string("socket: ") + std::strerror(errno)};
    }
    // The socket file gets its mode from the umask at bind (0777 & ~0177): 0600 from the start.
    const mode_t old = ::umask(0177);
    int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    int e = errno;
    ::umask(old);
    if (rc == 0 && ::listen(fd, 4) != 0) {
        rc = -1;
        e = errno;
    }
    if (rc != 0) {
        ::close(fd);
        return Error{"cannot listen on " + path + ": " + std::strerror(e)};
    }
    return fd;
}

int connect_unix(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        int e = errno;
        ::close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

}  // namespace hangar
