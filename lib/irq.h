// Interrupt masking, the guest's only concurrency: one CPU, and interrupt handlers (balloon
// config changes, virtqueue completions) that may run while the app is inside the allocator.
// Host builds (unit tests) have no interrupts; there the guard is a no-op and tests that need real
// concurrency use lib/spinlock.h's lock, which is a real spinlock on both sides.
#pragma once

#include <cstdint>

namespace blimp {

#if defined(BLIMP_GUEST)
inline uint64_t irq_save() {
  uint64_t flags;
  asm volatile("pushfq; popq %0; cli" : "=r"(flags)::"memory");
  return flags;
}
inline void irq_restore(uint64_t flags) {
  if (flags & (1u << 9)) asm volatile("sti" ::: "memory");
}
inline bool irqs_enabled() {
  uint64_t flags;
  asm volatile("pushfq; popq %0" : "=r"(flags));
  return flags & (1u << 9);
}
#else
inline uint64_t irq_save() { return 0; }
inline void irq_restore(uint64_t) {}
inline bool irqs_enabled() { return true; }
#endif

class IrqGuard {
 public:
  IrqGuard() : flags_(irq_save()) {}
  ~IrqGuard() { irq_restore(flags_); }
  IrqGuard(const IrqGuard&) = delete;
  IrqGuard& operator=(const IrqGuard&) = delete;

 private:
  uint64_t flags_;
};

}  // namespace blimp
