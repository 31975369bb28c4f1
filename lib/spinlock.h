// A spinlock that also masks interrupts on the guest, so code holding it cannot be re-entered by
// an interrupt handler on the same CPU. On the host it is a plain spinlock, which lets the unit
// and stress tests run guest logic from several threads.
//
// # Lock ranks (issue 17)
// Every SpinLock has a LockRank, and a CPU takes locks only in increasing rank: no lock is taken
// while a lock of the same or a higher rank is held, except that locks of one rank marked
// "address-ordered" (the per-CPU page caches, taken in index order, which is address order) may
// nest in increasing address order. Two CPUs can then never wait for each other in a cycle. The
// rule is the one the Locking sections of mm/page_allocator.h, mm/heap.h, kernel/deferred_work.cpp
// and the drivers describe, written down once. The host tests check it on every lock()
// (BLIMP_LOCK_ORDER_CHECK, set by cmake/host.cmake): each thread keeps the locks it holds, and a
// lock taken out of order aborts with both ranks named, so every unit, stress and TSan test that
// reaches two locks checks their order. The guest and the host benchmark (bench/mm) do not pay
// for it. The console's lock (kprintf, panic) is not a SpinLock and comes after every rank.
#pragma once

#include "lib/atomic.h"
#include "lib/irq.h"

#if defined(BLIMP_LOCK_ORDER_CHECK)
#include <cstdio>
#include <cstdlib>
#endif

namespace blimp {

// Outermost first. Gaps leave room for locks to come.
enum class LockRank : uint8_t {
  kApp = 10,            // an app's own data (kvcache's table and LRU); nothing is taken under it
  kVirtqueue = 20,      // one virtqueue's rings (drivers/virtio/virtqueue.h)
  kDmaPool = 30,        // the virtio DMA pool (drivers/virtio/dma_guest.cpp)
  kHeap = 40,           // the kernel heap's slab lists (mm/heap.h)
  kPageCache = 50,      // a CPU's page cache (mm/page_allocator.h), address-ordered
  kPageAllocator = 60,  // the page allocator (mm/page_allocator.h)
  kDeferredWork = 70,   // the deferred-work queue (kernel/deferred_work.cpp), a leaf
};

constexpr const char* lock_rank_name(LockRank r) {
  switch (r) {
    case LockRank::kApp: return "app";
    case LockRank::kVirtqueue: return "virtqueue";
    case LockRank::kDmaPool: return "dma pool";
    case LockRank::kHeap: return "heap";
    case LockRank::kPageCache: return "per-CPU page cache";
    case LockRank::kPageAllocator: return "page allocator";
    case LockRank::kDeferredWork: return "deferred work";
  }
  return "?";
}

// Ranks whose locks may nest among themselves, in increasing address order.
constexpr bool lock_rank_address_ordered(LockRank r) { return r == LockRank::kPageCache; }

#if defined(BLIMP_LOCK_ORDER_CHECK)
namespace lock_order {

struct Held {
  LockRank rank;
  const void* lock;
};
constexpr int kMaxHeld = 32;
inline thread_local Held t_held[kMaxHeld];
inline thread_local int t_count = 0;

inline void acquire(LockRank rank, const void* lock) {
  for (int i = 0; i < t_count; ++i) {
    const Held& h = t_held[i];
    const bool ok =
        rank > h.rank || (rank == h.rank && lock_rank_address_ordered(rank) && lock > h.lock);
    if (!ok) {
      std::fprintf(stderr,
                   "lock order violated: taking the %s lock (rank %d, %p) while holding the %s "
                   "lock (rank %d, %p)\n",
                   lock_rank_name(rank), int(rank), lock, lock_rank_name(h.rank), int(h.rank),
                   h.lock);
      std::abort();
    }
  }
  if (t_count == kMaxHeld) {
    std::fprintf(stderr, "lock order: more than %d locks held at once\n", kMaxHeld);
    std::abort();
  }
  t_held[t_count++] = {rank, lock};
}

inline void release(const void* lock) {
  for (int i = t_count - 1; i >= 0; --i) {
    if (t_held[i].lock != lock) continue;
    for (int j = i; j + 1 < t_count; ++j) t_held[j] = t_held[j + 1];
    --t_count;
    return;
  }
  std::fprintf(stderr, "lock order: unlocking %p, which this thread does not hold\n", lock);
  std::abort();
}

}  // namespace lock_order
#endif

class SpinLock {
 public:
  explicit constexpr SpinLock(LockRank rank) : rank_(rank) {}
  SpinLock(const SpinLock&) = delete;
  SpinLock& operator=(const SpinLock&) = delete;

  void lock() {
#if defined(BLIMP_LOCK_ORDER_CHECK)
    lock_order::acquire(rank_, this);
#endif
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
#if defined(BLIMP_LOCK_ORDER_CHECK)
    lock_order::release(this);
#endif
  }
  bool is_locked() const { return locked_.load(MemoryOrder::Relaxed); }

 private:
  Atomic<bool> locked_{false};
  LockRank rank_;
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
