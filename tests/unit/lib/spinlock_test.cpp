// Lock ranks (lib/spinlock.h): host builds abort on a lock taken out of order, so that every
// test reaching two locks checks their order. These tests prove the checker itself: what it lets
// through and what it stops.
#include "lib/spinlock.h"

#include <gtest/gtest.h>

#include <thread>

namespace blimp {
namespace {

TEST(LockRank, IncreasingRanksNestAndReleaseInAnyOrder) {
  SpinLock cache{LockRank::kPageCache}, allocator{LockRank::kPageAllocator},
      work{LockRank::kDeferredWork};
  cache.lock();
  allocator.lock();
  work.lock();
  // Not last-in first-out: the checker forgets exactly the lock released.
  allocator.unlock();
  cache.unlock();
  work.unlock();
  // Everything released: any lock may be taken again.
  work.lock();
  work.unlock();
  SpinLockGuard g(cache);
}

TEST(LockRank, AddressOrderedRankNestsUpwardOnly) {
  SpinLock caches[2] = {SpinLock{LockRank::kPageCache}, SpinLock{LockRank::kPageCache}};
  {
    SpinLockGuard a(caches[0]);
    SpinLockGuard b(caches[1]);
  }
  EXPECT_DEATH(
      {
        SpinLockGuard b(caches[1]);
        SpinLockGuard a(caches[0]);
      },
      "taking the per-CPU page cache lock .* while holding the per-CPU page cache lock");
}

TEST(LockRank, LowerRankUnderHigherAborts) {
  SpinLock heap{LockRank::kHeap}, allocator{LockRank::kPageAllocator};
  EXPECT_DEATH(
      {
        SpinLockGuard a(allocator);
        SpinLockGuard h(heap);
      },
      "lock order violated: taking the heap lock \\(rank 40.*while holding the page allocator "
      "lock \\(rank 60");
}

TEST(LockRank, SameRankThatIsNotAddressOrderedAborts) {
  SpinLock q1{LockRank::kVirtqueue}, q2{LockRank::kVirtqueue};
  EXPECT_DEATH(
      {
        SpinLockGuard a(q1);
        SpinLockGuard b(q2);
      },
      "taking the virtqueue lock .* while holding the virtqueue lock");
}

TEST(LockRank, UnlockingALockNotHeldAborts) {
  SpinLock l{LockRank::kApp};
  EXPECT_DEATH(l.unlock(), "which this thread does not hold");
}

TEST(LockRank, EachThreadHasItsOwnHeldLocks) {
  // A lock held on one thread says nothing about the order on another.
  SpinLock allocator{LockRank::kPageAllocator}, heap{LockRank::kHeap};
  SpinLockGuard a(allocator);
  std::thread t([&] { SpinLockGuard h(heap); });
  t.join();
}

}  // namespace
}  // namespace blimp
