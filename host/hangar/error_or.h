// ErrorOr<T>: how fallible hangar functions return, the host's counterpart of the guest's
// lib/error.h (same names: is_error(), error(), value(), release_value(), TRY).
//
// lib/error.h compiles as host code, but its Error is a closed set of codes, which suits a kernel
// without strings. hangar's errors are sentences for the person who runs it (the file, the key,
// the value, errno's words), so here Error is a message. Functions that answer "nothing" without
// anything having gone wrong (a process that is gone, a stat never reported) return
// std::optional instead; thin system-call wrappers (open_nofollow, connect_unix) keep errno,
// because callers decide on its value.
//
// Exceptions remain only where C++ or a library forces them: CLI11 reports bad flags by
// throwing; nlohmann::json::parse's message (with the byte offset) comes only with its exception;
// EventLoop's constructor can fail only by throwing, and its epoll_ctl/epoll_wait failures (a bug
// in hangar, not a condition to handle) throw alike. A last-resort catch in main() turns those and
// anything else unexpected (std::bad_alloc, a json type_error) into a message and exit status 3.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace hangar {

struct Error {
    std::string message;
};

template <typename T>
class [[nodiscard]] ErrorOr {
public:
    ErrorOr(T value) : v_(std::in_place_index<0>, std::move(value)) {}
    ErrorOr(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

    bool is_error() const { return v_.index() == 1; }
    explicit operator bool() const { return !is_error(); }
    const Error& error() const { return std::get<1>(v_); }
    T& value() { return std::get<0>(v_); }
    const T& value() const { return std::get<0>(v_); }
    T release_value() { return std::move(std::get<0>(v_)); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() { return value(); }
    const T& operator*() const { return value(); }

private:
    std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] ErrorOr<void> {
public:
    ErrorOr() = default;
    ErrorOr(Error error) : error_(std::move(error)), has_error_(true) {}

    bool is_error() const { return has_error_; }
    explicit operator bool() const { return !has_error_; }
    const Error& error() const { return error_; }
    void release_value() {}  // lets TRY() work on ErrorOr<void>

private:
    Error error_;
    bool has_error_ = false;
};

}  // namespace hangar

// Propagate an error to the caller: auto x = TRY(f());  (a GNU statement expression, as in
// lib/error.h; the same tokens, so a file could include both.)
#ifndef TRY
#define TRY(expr)                                               \
    ({                                                          \
        auto _try_result = (expr);                              \
        if (_try_result.is_error()) return _try_result.error(); \
        _try_result.release_value();                            \
    })
#endif
