// The background churn smp.background=churn runs on every idle AP (mm/background_churn.h): it
// must give all its memory back, hold no more than it says, survive running out of memory, and
// notice a page changed under it, which is the point of running it.
#include "mm/background_churn.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "arena.h"
#include "kernel/percpu.h"

namespace blimp::mm::test {
namespace {

constexpr uint64_t kMaxHeldPages = BackgroundChurn::kSlots << BackgroundChurn::kMaxOrder;

TEST(BackgroundChurn, HoldsAtMostItsRingAndGivesEverythingBack) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  const uint64_t free_before = pa.free_pages_count();
  BackgroundChurn churn(pa, 1);
  ChurnMismatch bad;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(churn.step(bad)) << "word " << bad.word;
    ASSERT_LE(churn.held(), BackgroundChurn::kSlots);
    ASSERT_LE(free_before - pa.free_pages_count(), kMaxHeldPages);
  }
  EXPECT_EQ(churn.held(), BackgroundChurn::kSlots);
  EXPECT_EQ(churn.counters().allocated, 1000u);
  EXPECT_EQ(churn.counters().checked, 1000u - BackgroundChurn::kSlots);
  ASSERT_TRUE(churn.release_all(bad));
  EXPECT_EQ(churn.held(), 0u);
  EXPECT_EQ(pa.free_pages_count(), free_before);
  EXPECT_TRUE(pa.check_invariants());
}

TEST(BackgroundChurn, UsesSinglePagesAndLargerBlocks) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  const uint64_t free_before = pa.free_pages_count();
  BackgroundChurn churn(pa, 1);
  ChurnMismatch bad;
  for (size_t i = 0; i < BackgroundChurn::kSlots; ++i) ASSERT_TRUE(churn.step(bad));
  // Orders 0,0,0,0,0,1,2,3 per eight steps: 5 + 2 + 4 + 8 = 19 pages.
  EXPECT_EQ(free_before - pa.free_pages_count(), BackgroundChurn::kSlots / 8 * 19);
  ASSERT_TRUE(churn.release_all(bad));
}

TEST(BackgroundChurn, ChangedWordIsReportedAndTheBlockKept) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  BackgroundChurn churn(pa, 7);
  ChurnMismatch bad;
  ASSERT_TRUE(churn.step(bad));  // seq 0, order 0: the block about to be checked first
  // Find it: the only page the allocator lost.
  PhysAddr block = 0;
  for (PhysAddr a = f.arena.base(); a < f.arena.end(); a += kPageSize) {
    if (*reinterpret_cast<uint64_t*>(a) == BackgroundChurn::pattern(7, 0, a, 0)) block = a;
  }
  ASSERT_NE(block, 0u);
  // A host that discarded the page while the guest held it: the guest reads zeros back.
  reinterpret_cast<uint64_t*>(block)[100] = 0;
  for (size_t i = 1; i < BackgroundChurn::kSlots; ++i) ASSERT_TRUE(churn.step(bad));
  const uint64_t free_before_check = pa.free_pages_count();
  EXPECT_FALSE(churn.step(bad));
  EXPECT_EQ(bad.block, block);
  EXPECT_EQ(bad.order, 0u);
  EXPECT_EQ(bad.word, 100u);
  EXPECT_EQ(bad.found, 0u);
  EXPECT_EQ(bad.expected, BackgroundChurn::pattern(7, 0, block, 100));
  // Not freed: the damaged page stays out of the allocator.
  EXPECT_EQ(pa.free_pages_count(), free_before_check);
  EXPECT_FALSE(churn.release_all(bad));
  EXPECT_EQ(bad.block, block);
}

TEST(BackgroundChurn, NoMemoryGivesTheRingBackInsteadOfHoldingIt) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  BackgroundChurn churn(pa, 1);
  ChurnMismatch bad;
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(churn.step(bad));
  // Take everything else, as a balloon inflated to the last page would.
  std::vector<PhysAddr> taken;
  for (;;) {
    auto a = pa.alloc_pages(0, Owner::Kernel, kAllocNoReclaim);
    if (a.is_error()) break;
    taken.push_back(a.value());
  }
  ASSERT_GT(churn.held(), 0u);
  const uint64_t free_before = pa.free_pages_count();
  ASSERT_TRUE(churn.step(bad));  // finds no memory
  EXPECT_EQ(churn.counters().failed, 1u);
  EXPECT_EQ(churn.held(), 0u);
  EXPECT_GT(pa.free_pages_count(), free_before);
  // The memory stays given back for a while: nothing is allocated while the churn backs off.
  const uint64_t given_back = pa.free_pages_count();
  for (uint32_t i = 0; i < BackgroundChurn::kBackoffSteps; ++i) ASSERT_TRUE(churn.step(bad));
  EXPECT_EQ(pa.free_pages_count(), given_back);
  EXPECT_EQ(churn.held(), 0u);
  ASSERT_TRUE(churn.step(bad));  // then it allocates again
  EXPECT_EQ(churn.held(), 1u);
  for (PhysAddr a : taken) pa.free_pages(a, 0);
  ASSERT_TRUE(churn.release_all(bad));
  EXPECT_TRUE(pa.check_invariants());
}

// Every "CPU" churning the same allocator at once, per-CPU caches on, as smp.background=churn
// runs on an SMP guest; no block may change and the allocator must end where it began.
TEST(BackgroundChurn, SeveralCpusAtOnceLoseNothing) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  pa.set_percpu_caches(true);
  const uint64_t free_before = pa.free_pages_count();
  constexpr size_t kCpus = 4;
  std::vector<std::thread> cpus;
  std::vector<int> ok(kCpus, 0);
  for (size_t c = 0; c < kCpus; ++c) {
    cpus.emplace_back([&, c] {
      percpu::set_host_cpu_index(c);
      BackgroundChurn churn(pa, c);
      ChurnMismatch bad;
      bool good = true;
      for (int i = 0; i < 3000 && good; ++i) good = churn.step(bad);
      ok[c] = good && churn.release_all(bad);
      percpu::set_host_cpu_index(0);
    });
  }
  for (auto& t : cpus) t.join();
  for (size_t c = 0; c < kCpus; ++c) EXPECT_TRUE(ok[c]) << "cpu " << c;
  EXPECT_EQ(pa.free_pages_count(), free_before);  // cached pages count as free
  pa.drain_percpu_caches();
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  EXPECT_TRUE(pa.check_invariants());
}

}  // namespace
}  // namespace blimp::mm::test
