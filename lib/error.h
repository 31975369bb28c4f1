// Error codes and ErrorOr<T>: how fallible kernel functions return, instead of magic values.
// No exceptions in the guest, so every failure is a value the caller must look at.
#pragma once

#include <new>
#include <type_traits>
#include <utility>

namespace blimp {

enum class Error : int {
  NoMemory = 1,     // allocator could not satisfy the request
  InvalidArgument,  // caller passed something out of range
  NotFound,         // no such device / app / entry
  Busy,             // resource in use; try again later
  DeviceError,      // a device misbehaved (bad id, bad length, reset under us)
  Unsupported,      // feature not offered / not implemented on this transport
  Timeout,          // device did not answer in time
  LimitReached,     // a configured floor or ceiling stops the operation
};

const char* error_name(Error e);

template <typename T>
class [[nodiscard]] ErrorOr {
 public:
  ErrorOr(T value) : has_value_(true) { new (&storage_.value) T(std::move(value)); }
  ErrorOr(Error error) : has_value_(false) { storage_.error = error; }
  ErrorOr(const ErrorOr& o) : has_value_(o.has_value_) {
    if (has_value_)
      new (&storage_.value) T(o.storage_.value);
    else
      storage_.error = o.storage_.error;
  }
  ErrorOr& operator=(const ErrorOr& o) {
    if (this == &o) return *this;
    this->~ErrorOr();
    new (this) ErrorOr(o);
    return *this;
  }
  ~ErrorOr() {
    if (has_value_) storage_.value.~T();
  }

  bool is_error() const { return !has_value_; }
  explicit operator bool() const { return has_value_; }
  Error error() const { return storage_.error; }
  T& value() { return storage_.value; }
  const T& value() const { return storage_.value; }
  T release_value() { return std::move(storage_.value); }

 private:
  bool has_value_;
  union Storage {
    Storage() {}
    ~Storage() {}
    T value;
    Error error;
  } storage_;
};

template <>
class [[nodiscard]] ErrorOr<void> {
 public:
  ErrorOr() = default;
  ErrorOr(Error error) : error_(error), has_error_(true) {}
  bool is_error() const { return has_error_; }
  explicit operator bool() const { return !has_error_; }
  Error error() const { return error_; }
  void release_value() {}  // lets TRY() work on ErrorOr<void>

 private:
  Error error_{};
  bool has_error_ = false;
};

inline const char* error_name(Error e) {
  switch (e) {
    case Error::NoMemory: return "out of memory";
    case Error::InvalidArgument: return "invalid argument";
    case Error::NotFound: return "not found";
    case Error::Busy: return "busy";
    case Error::DeviceError: return "device error";
    case Error::Unsupported: return "unsupported";
    case Error::Timeout: return "timeout";
    case Error::LimitReached: return "limit reached";
  }
  return "unknown error";
}

}  // namespace blimp

// Propagate an error to the caller: auto x = TRY(f());
#define TRY(expr)                                           \
  ({                                                        \
    auto _try_result = (expr);                              \
    if (_try_result.is_error()) return _try_result.error(); \
    _try_result.release_value();                            \
  })
