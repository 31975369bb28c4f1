#include "event_loop.h"

#include <sys/epoll.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace hangar {

EventLoop::EventLoop() : epfd_(epoll_create1(EPOLL_CLOEXEC)) {
    if (epfd_ < 0) throw std::runtime_error(std::string("epoll_create1: ") + std::strerror(errno));
}

EventLoop::~EventLoop() { ::close(epfd_); }

void EventLoop::watch(int fd, uint32_t events, FdHandler handler) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    int op = watches_.count(fd) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(epfd_, op, fd, &ev) < 0)
        throw std::runtime_error("epoll_ctl(" + std::to_string(fd) + "): " + std::strerror(errno));
    watches_[fd] = Watch{events, std::make_shared<FdHandler>(std::move(handler))};
}

void EventLoop::modify(int fd, uint32_t events) {
    auto it = watches_.find(fd);
    if (it == watches_.end() || it->second.events == events) return;
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev) == 0) it->second.events = events;
}

void EventLoop::unwatch(int fd) {
    auto it = watches_.find(fd);
    if (it == watches_.end()) return;
    epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);  // may already be closed: nothing to undo then
    watches_.erase(it);
}

EventLoop::TimerId EventLoop::after(Clock::duration delay, std::function<void()> fn) {
    TimerId id = next_timer_++;
    auto when = Clock::now() + delay;
    timers_[id] = {when, std::move(fn)};
    timer_order_.emplace(when, id);
    return id;
}

void EventLoop::cancel(TimerId id) {
    auto it = timers_.find(id);
    if (it == timers_.end()) return;
    auto range = timer_order_.equal_range(it->second.first);
    for (auto o = range.first; o != range.second; ++o) {
        if (o->second == id) {
            timer_order_.erase(o);
            break;
        }
    }
    timers_.erase(it);
}

void EventLoop::run_once(Clock::duration max_wait) {
    auto now = Clock::now();
    if (!timer_order_.empty()) {
        auto until = timer_order_.begin()->first - now;
        if (until < max_wait) max_wait = until;
    }
    if (max_wait < Clock::duration::zero()) max_wait = Clock::duration::zero();
    int timeout_ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(max_wait).count());
    epoll_event events[64];
    int n = epoll_wait(epfd_, events, 64, timeout_ms);
    if (n < 0 && errno != EINTR) throw std::runtime_error(std::string("epoll_wait: ") + std::strerror(errno));
    for (int i = 0; i < n; ++i) {
        auto it = watches_.find(events[i].data.fd);
        if (it == watches_.end()) continue;
        auto handler = it->second.handler;  // keeps the handler alive if it unwatches itself
        (*handler)(events[i].events);
    }
    now = Clock::now();
    std::vector<TimerId> due;
    for (auto it = timer_order_.begin(); it != timer_order_.end() && it->first <= now; ++it) due.push_back(it->second);
    for (TimerId id : due) {
        auto it = timers_.find(id);
        if (it == timers_.end()) continue;  // cancelled by an earlier timer in this batch
        auto fn = std::move(it->second.second);
        cancel(id);
        fn();
    }
}

}  // namespace hangar
