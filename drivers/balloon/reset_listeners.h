// Who must redo device-side setup after the balloon device was reset.
//
// A device reset (the device writes status 0 or sets DEVICE_NEEDS_RESET, or the host resets it)
// makes the device forget everything the driver told it besides what lives in the rings: for the
// Blimp extensions that is the page-state array registration and the sharing hints (spec section
// 10: a driver SHOULD re-register and re-send after a reset). The balloon reinitialises the
// device and then runs every registered listener from its work context; a listener re-sends what
// the device forgot.
//
// A listener may not be able to run right now (typically: the app was in the middle of a blimpq
// request or of a seal() when the balloon's work interrupted it): it answers Retry and is run
// again later, at most kMaxAttempts times per reset. Host-compilable, no allocation.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/error.h"
#include "mm/device_channel.h"

namespace blimp::balloon {

class ResetListeners {
 public:
  static constexpr size_t kMax = 4;
  static constexpr uint32_t kMaxAttempts = 200;

  // Done: re-registered (or failed for good: the listener has logged why); Retry: cannot run
  // now, run again later. Defined in mm, whose page states and sharing are the listeners.
  using Result = mm::ResetListenerResult;
  using Fn = mm::ResetListenerFn;

  // Adds a listener (the same fn/ctx twice is one listener). LimitReached when full.
  ErrorOr<void> add(Fn fn, void* ctx) {
    if (!fn) return Error::InvalidArgument;
    for (size_t i = 0; i < n_; i++)
      if (l_[i].fn == fn && l_[i].ctx == ctx) return {};
    if (n_ == kMax) return Error::LimitReached;
    l_[n_++] = {fn, ctx, false, 0};
    return {};
  }

  // The device was reset (and reinitialised): every listener is due, with a fresh budget. A
  // listener still pending from an earlier reset simply stays due once.
  void device_reset() {
    resets_++;
    for (size_t i = 0; i < n_; i++) {
      l_[i].pending = true;
      l_[i].attempts = 0;
    }
  }

  // Runs every due listener once, in registration order. Returns how many are still due (they
  // answered Retry and have attempts left); a listener that used up its attempts is dropped and
  // counted in gave_up().
  size_t run() {
    size_t due = 0;
    for (size_t i = 0; i < n_; i++) {
      Listener& l = l_[i];
      if (!l.pending) continue;
      l.attempts++;
      const uint64_t before = resets_;
      Result r = l.fn(l.ctx);
      if (resets_ != before) {
        due++;  // another reset while it ran: what it sent went to the old device; run it again
      } else if (r == Result::Done) {
        l.pending = false;
        done_++;
      } else if (l.attempts >= kMaxAttempts) {
        l.pending = false;
        gave_up_++;
      } else {
        due++;
      }
    }
    return due;
  }

  bool pending() const {
    for (size_t i = 0; i < n_; i++)
      if (l_[i].pending) return true;
    return false;
  }
  size_t size() const { return n_; }
  uint64_t resets() const { return resets_; }
  uint64_t done() const { return done_; }
  uint64_t gave_up() const { return gave_up_; }

 private:
  struct Listener {
    Fn fn;
    void* ctx;
    bool pending;
    uint32_t attempts;
  };
  Listener l_[kMax] = {};
  size_t n_ = 0;
  uint64_t resets_ = 0;
  uint64_t done_ = 0;
  uint64_t gave_up_ = 0;
};

}  // namespace blimp::balloon
