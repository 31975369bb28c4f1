// EventLoop: epoll over file descriptors plus one-shot timers, single-threaded.
//
// Handlers may add or remove watches and timers (including their own) while being dispatched:
// a removed handler is never called again, even later in the same batch of events.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>

namespace hangar {

class EventLoop {
public:
    using Clock = std::chrono::steady_clock;
    using FdHandler = std::function<void(uint32_t events)>;
    using TimerId = uint64_t;

    EventLoop();
    ~EventLoop();
    EventLoop(const EventLoop&) = delete;
    EventLoop& operator=(const EventLoop&) = delete;

    void watch(int fd, uint32_t events, FdHandler handler);
    void modify(int fd, uint32_t events);
    void unwatch(int fd);

    TimerId after(Clock::duration delay, std::function<void()> fn);
    void cancel(TimerId id);

    // Waits for at most `max_wait` and dispatches what is ready.
    void run_once(Clock::duration max_wait);

private:
    struct Watch {
        uint32_t events;
        std::shared_ptr<FdHandler> handler;
    };
    int epfd_;
    std::map<int, Watch> watches_;
    std::multimap<Clock::time_point, TimerId> timer_order_;
    std::map<TimerId, std::pair<Clock::time_point, std::function<void()>>> timers_;
    TimerId next_timer_ = 1;
};

}  // namespace hangar
