// A spinlock that also masks interrupts on the guest, so code holding it cannot be re-entered by
// an interrupt handler on the same CPU. On the host it is a plain spinlock, which lets the unit
// and stress tests run guest logic from several threads.
#pragma once

#include "lib/atomic.h"
#include "lib/irq.h"

namespace blimp {

class SpinLock {
 public:
  void lock() {
    uint64_t flags = irq_save();
    while (locked_.exchange(true, MemoryOrder::Acquire)) {
      while (locked_.load(MemoryOrder::Relaxed)) cpu_relax();
    }
    saved_flags_ = flags;
  }
  void unlock() {
    uint64_t flags = saved_flags_;
    locked_.store(false, MemoryOrder::Release);
    irq_restore(flags);
  }
  bool is_locked() const { return locked_.load(MemoryOrder::Relaxed); }

 private:
  Atomic<bool> locked_{false};
  uint64_t saved_flags_ = 0;
};

class SpinLockGuard {
 public:
  explicit SpinLockGuard(SpinLock& l) : lock_(l) { lock_.lock(); }
  ~SpinLockGuard() { lock_.unlock(); }
  SpinLockGuard(const SpinLockGuard&) = delete;
  SpinLockGuard& operator=(const SpinLockGuard&) = delete;

 private:
  SpinLock& lock_;
};

}  // namespace blimp
