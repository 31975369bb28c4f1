// Atomics over GCC's __atomic builtins. libstdc++'s <atomic> drags in gthreads/futex headers
// configured for glibc, so freestanding guest code uses these instead. Host builds use the same
// builtins, so the host unit tests exercise exactly the code the guest runs.
#pragma once

#include <cstdint>
#include <type_traits>

namespace blimp {

enum class MemoryOrder : int {
  Relaxed = __ATOMIC_RELAXED,
  Acquire = __ATOMIC_ACQUIRE,
  Release = __ATOMIC_RELEASE,
  AcqRel = __ATOMIC_ACQ_REL,
  SeqCst = __ATOMIC_SEQ_CST,
};

template <typename T>
class Atomic {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);

 public:
  constexpr Atomic() = default;
  constexpr explicit Atomic(T v) : value_(v) {}
  Atomic(const Atomic&) = delete;
  Atomic& operator=(const Atomic&) = delete;

  T load(MemoryOrder o = MemoryOrder::SeqCst) const {
    return __atomic_load_n(&value_, static_cast<int>(o));
  }
  void store(T v, MemoryOrder o = MemoryOrder::SeqCst) {
    __atomic_store_n(&value_, v, static_cast<int>(o));
  }
  T exchange(T v, MemoryOrder o = MemoryOrder::SeqCst) {
    return __atomic_exchange_n(&value_, v, static_cast<int>(o));
  }
  // On failure `expected` receives the current value, as with std::atomic.
  bool compare_exchange(T& expected, T desired, MemoryOrder o = MemoryOrder::SeqCst) {
    return __atomic_compare_exchange_n(&value_, &expected, desired, false, static_cast<int>(o),
                                       failure_order(o));
  }
  T fetch_add(T v, MemoryOrder o = MemoryOrder::SeqCst) {
    return __atomic_fetch_add(&value_, v, static_cast<int>(o));
  }
  T fetch_sub(T v, MemoryOrder o = MemoryOrder::SeqCst) {
    return __atomic_fetch_sub(&value_, v, static_cast<int>(o));
  }
  T fetch_or(T v, MemoryOrder o = MemoryOrder::SeqCst) {
    return __atomic_fetch_or(&value_, v, static_cast<int>(o));
  }
  T fetch_and(T v, MemoryOrder o = MemoryOrder::SeqCst) {
    return __atomic_fetch_and(&value_, v, static_cast<int>(o));
  }

 private:
  static constexpr int failure_order(MemoryOrder o) {
    if (o == MemoryOrder::AcqRel) return __ATOMIC_ACQUIRE;
    if (o == MemoryOrder::Release) return __ATOMIC_RELAXED;
    return static_cast<int>(o);
  }
  alignas(sizeof(T)) T value_{};
};

// One-byte compare-and-swap on memory we do not own as an Atomic (e.g. an array shared with the
// host). Returns true when `expected` was found and replaced.
inline bool cas_byte(volatile uint8_t* p, uint8_t& expected, uint8_t desired) {
  return __atomic_compare_exchange_n(const_cast<uint8_t*>(p), &expected, desired, false,
                                     __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

inline void memory_barrier() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// One iteration of a spin-wait: the x86 `pause` hint (saves power, and tells a hypervisor or a
// sibling hyperthread that this CPU is only waiting). The one such helper, for every layer.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace blimp
