// The per-CPU page caches in front of the allocator's lock (mm/page_allocator.h, "Per-CPU page
// caches"): what a cached page is to the allocator, the host and the stats, and that every path
// that needs free memory drains them. A host thread plays a CPU through set_host_cpu_index.
#include <gtest/gtest.h>

#include <vector>

#include "arena.h"
#include "kernel/percpu.h"

namespace blimp::mm::test {
namespace {

constexpr uint32_t kBatch = PageAllocator::kPcpBatch;
constexpr uint32_t kHigh = PageAllocator::kPcpHigh;
constexpr uint32_t kLow = PageAllocator::kPcpLow;

struct OnCpu {
  explicit OnCpu(size_t cpu) { percpu::set_host_cpu_index(cpu); }
  ~OnCpu() { percpu::set_host_cpu_index(0); }
};

// Records the owner the state hook last saw per page, and how often it ran.
struct Hooked {
  PhysAddr base;
  std::vector<Owner> state;
  uint64_t calls = 0;
  bool zero_answer = false;
  static bool hook(PhysAddr first, size_t count, Owner o, void* ctx) {
    auto* h = static_cast<Hooked*>(ctx);
    ++h->calls;
    for (size_t i = 0; i < count; ++i) h->state[(first - h->base) / kPageSize + i] = o;
    return h->zero_answer && !is_free_owner(o);
  }
  Owner at(PhysAddr a) const { return state[(a - base) / kPageSize]; }
};

TEST(PercpuCache, OffByDefaultAndTheOldPathIsUnchanged) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  EXPECT_FALSE(pa.percpu_caches());
  PhysAddr a = pa.alloc_pages(0, Owner::Kernel).value();
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages() - 1);
  pa.free_pages(a, 0);
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  EXPECT_TRUE(pa.check_invariants());
}

TEST(PercpuCache, RefillClaimsABatchThatStaysFreeMemory) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  Hooked h{f.arena.base(), std::vector<Owner>(f.arena.size / kPageSize, Owner::Free)};
  pa.set_state_hook(&Hooked::hook, &h);
  pa.set_percpu_caches(true);
  const uint64_t total = pa.total_pages();
  PhysAddr a = pa.alloc_pages(0, Owner::Kernel).value();
  // The refill made the claim for the whole batch, one hook call per page, under the lock.
  EXPECT_EQ(h.calls, kBatch);
  EXPECT_EQ(h.at(a), Owner::Kernel);
  EXPECT_EQ(pa.percpu_cached_pages(), kBatch - 1);
  EXPECT_EQ(pa.owner_of(a), Owner::Kernel);
  // Free memory for everyone who asks: the balloon, the stats, the host.
  EXPECT_EQ(pa.free_pages_count(), total - 1);
  MemoryStats s = pa.stats();
  EXPECT_EQ(s.free_bytes, (total - 1) * kPageSize);
  EXPECT_EQ(s.percpu_bytes, (kBatch - 1) * kPageSize);
  EXPECT_EQ(s.kernel_bytes, kPageSize);
  EXPECT_EQ(s.allocations, 1u);
  EXPECT_TRUE(pa.check_invariants());
  // Served from the cache: no lock-side transition, no hook call.
  PhysAddr b = pa.alloc_pages(0, Owner::Kernel).value();
  EXPECT_EQ(h.calls, kBatch);
  pa.free_pages(b, 0);
  pa.free_pages(a, 0);
  EXPECT_EQ(h.calls, kBatch);
  EXPECT_EQ(pa.percpu_cached_pages(), kBatch);
  EXPECT_EQ(pa.stats().frees, 2u);
  // Drained: the host sees them unused again.
  EXPECT_EQ(pa.drain_percpu_caches(), kBatch);
  EXPECT_EQ(h.at(a), Owner::Free);
  EXPECT_EQ(h.at(b), Owner::Free);
  EXPECT_EQ(pa.free_pages_count(), total);
  EXPECT_TRUE(pa.check_invariants());
  pa.set_state_hook(nullptr);
}

TEST(PercpuCache, KernelAndAppPagesAreCachedApart) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  pa.set_percpu_caches(true);
  PhysAddr k = pa.alloc_pages(0, Owner::Kernel).value();
  PhysAddr a = pa.alloc_pages(0, Owner::App).value();
  EXPECT_EQ(pa.owner_of(k), Owner::Kernel);
  EXPECT_EQ(pa.owner_of(a), Owner::App);
  EXPECT_EQ(pa.percpu_cached_pages(), 2 * (kBatch - 1));
  MemoryStats s = pa.stats();
  EXPECT_EQ(s.kernel_bytes, kPageSize);
  EXPECT_EQ(s.app_bytes, kPageSize);
  // Other orders, other owners and cold requests take the global path.
  PhysAddr v = pa.alloc_pages(0, Owner::Volatile).value();
  PhysAddr o1 = pa.alloc_pages(1, Owner::Kernel).value();
  PhysAddr c = pa.alloc_pages(0, Owner::Kernel, kAllocPreferCold).value();
  EXPECT_EQ(pa.percpu_cached_pages(), 2 * (kBatch - 1));
  pa.free_pages(v, 0);
  pa.free_pages(o1, 1);
  EXPECT_EQ(pa.percpu_cached_pages(), 2 * (kBatch - 1));
  pa.free_pages(c, 0);  // an order-0 Kernel page: cached, wherever it came from
  pa.free_pages(k, 0);
  pa.free_pages(a, 0);
  EXPECT_EQ(pa.percpu_cached_pages(), 2 * kBatch + 1);
  EXPECT_TRUE(pa.check_invariants());
  pa.drain_percpu_caches();
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
}

TEST(PercpuCache, FullStackDrainsItsOldestPages) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  pa.set_percpu_caches(false);
  std::vector<PhysAddr> pages;
  for (uint32_t i = 0; i < kHigh + 1; ++i) pages.push_back(pa.alloc_pages(0, Owner::App).value());
  pa.set_percpu_caches(true);
  for (uint32_t i = 0; i < kHigh; ++i) pa.free_pages(pages[i], 0);
  EXPECT_EQ(pa.percpu_cached_pages(), kHigh);
  pa.free_pages(pages[kHigh], 0);
  EXPECT_EQ(pa.percpu_cached_pages(), kLow + 1);
  EXPECT_TRUE(pa.check_invariants());
  // The oldest went back to the lists; the newer ones stay cached.
  EXPECT_EQ(pa.owner_of(pages[kHigh]), Owner::App);
  EXPECT_EQ(pa.owner_of(pages[kLow - 1]), Owner::Free);
  EXPECT_EQ(pa.owner_of(pages[kLow]), Owner::App);
  pa.set_percpu_caches(false);
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
  EXPECT_TRUE(pa.check_invariants());
}

TEST(PercpuCache, ZeroKnowledgeFromTheClaimIsKeptUntilHandedOut) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  Hooked h{f.arena.base(), std::vector<Owner>(f.arena.size / kPageSize, Owner::Free)};
  h.zero_answer = true;  // as if the host had discarded every unused page
  pa.set_state_hook(&Hooked::hook, &h);
  pa.set_percpu_caches(true);
  PhysAddr a = pa.alloc_pages(0, Owner::App, kAllocZero).value();
  EXPECT_EQ(pa.stats().zero_skips, 1u);
  EXPECT_EQ(reinterpret_cast<uint8_t*>(a)[0], 0xa5);  // untouched: the claim vouched for it
  std::memset(reinterpret_cast<void*>(a), 0x11, kPageSize);
  pa.free_pages(a, 0);
  // Freed into the cache it is dirty: the next zeroed allocation of it writes.
  PhysAddr b = pa.alloc_pages(0, Owner::App, kAllocZero).value();
  EXPECT_EQ(b, a);
  EXPECT_EQ(pa.stats().zero_fills, 1u);
  EXPECT_EQ(reinterpret_cast<uint8_t*>(b)[100], 0);
  pa.free_pages(b, 0);
  pa.set_state_hook(nullptr);
  pa.drain_percpu_caches();
  EXPECT_TRUE(pa.check_invariants());
}

// Fills CPU 1's and CPU 2's caches, then CPU 0 does what needs free memory.
struct TwoCachesFull {
  explicit TwoCachesFull(PageAllocator& pa) : pa(pa) {
    pa.set_percpu_caches(true);
    for (size_t cpu = 1; cpu <= 2; ++cpu) {
      OnCpu on(cpu);
      PhysAddr a = pa.alloc_pages(0, cpu == 1 ? Owner::Kernel : Owner::App).value();
      pa.free_pages(a, 0);
    }
  }
  PageAllocator& pa;
};

TEST(PercpuCache, BalloonTakesCachedPagesToo) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  TwoCachesFull caches(pa);
  ASSERT_EQ(pa.percpu_cached_pages(), 2 * kBatch);
  const uint64_t free = pa.free_pages_count();
  EXPECT_EQ(free, pa.total_pages());
  std::vector<PageRun> runs(4096);
  size_t n = pa.take_pages(free, Owner::Balloon, runs.data(), runs.size());
  uint64_t taken = 0;
  for (size_t i = 0; i < n; ++i) taken += runs[i].pages;
  EXPECT_EQ(taken, free);
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  EXPECT_EQ(pa.free_pages_count(), 0u);
  EXPECT_TRUE(pa.check_invariants());
  pa.give_back(runs.data(), n, false);
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
}

TEST(PercpuCache, ReportingSeesCachedPagesMerged) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  auto shape = free_shape(pa);
  TwoCachesFull caches(pa);
  EXPECT_NE(free_shape(pa), shape);  // the cached pages broke blocks up
  std::vector<PageRun> runs(64);
  size_t n = pa.isolate_unreported(0, runs.data(), runs.size());
  uint64_t isolated = 0;
  for (size_t i = 0; i < n; ++i) isolated += runs[i].pages;
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  // All of it went to the host, merged back into the blocks it was before the caches.
  EXPECT_EQ(isolated, pa.total_pages());
  pa.return_isolated(runs.data(), n, true);
  EXPECT_EQ(free_shape(pa), shape);
  EXPECT_TRUE(pa.check_invariants());
}

TEST(PercpuCache, AllocationDrainsOtherCachesBeforeFailing) {
  Fixture f(4 * kMiB);
  PageAllocator& pa = *f.pa;
  TwoCachesFull caches(pa);
  const uint64_t free = pa.free_pages_count();
  // CPU 3 allocates everything, interrupts-masked style (no reclaim): the other CPUs' cached
  // pages must come to it too, through both its own cache and the global path.
  OnCpu on(3);
  std::vector<PhysAddr> got;
  for (;;) {
    auto a = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
    if (a.is_error()) break;
    got.push_back(a.value());
  }
  EXPECT_EQ(got.size(), free);
  EXPECT_EQ(pa.stats().alloc_failures, 1u);
  EXPECT_TRUE(pa.check_invariants());
  for (PhysAddr a : got) pa.free_pages(a, 0);
  pa.drain_percpu_caches();
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
}

TEST(PercpuCache, BalloonDemandDrainsAndBypassesTheCaches) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  TwoCachesFull caches(pa);
  pa.post_cache_demand(16, nullptr, nullptr);
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  PhysAddr a = pa.alloc_pages(0, Owner::App, kAllocNoReclaim).value();
  pa.free_pages(a, 0);
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  pa.forget_cache_demand();
  a = pa.alloc_pages(0, Owner::App).value();
  EXPECT_EQ(pa.percpu_cached_pages(), kBatch - 1);
  pa.free_pages(a, 0);
  pa.set_percpu_caches(false);
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
  EXPECT_TRUE(pa.check_invariants());
}

TEST(PercpuCache, DrainFiresTheReportHook) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  std::vector<PhysAddr> pages;
  // Take everything so that the drained pages alone reach the threshold.
  std::vector<PageRun> runs(4096);
  size_t n = pa.take_pages(pa.total_pages(), Owner::Balloon, runs.data(), runs.size());
  PageRun first{runs[0].base, 64};
  runs[0].base += 64 * kPageSize;
  runs[0].pages -= 64;
  pa.give_back(&first, 1, true);  // 64 reported pages
  pa.set_percpu_caches(true);
  for (int i = 0; i < 64; ++i) pages.push_back(pa.alloc_pages(0, Owner::App).value());
  for (PhysAddr p : pages) pa.free_pages(p, 0);
  int fired = 0;
  pa.set_report_hook([](uint64_t, void* ctx) { ++*static_cast<int*>(ctx); }, &fired, 0, 64);
  EXPECT_EQ(fired, 0);
  EXPECT_EQ(pa.drain_percpu_caches(), 64u);
  EXPECT_EQ(fired, 1);
  pa.give_back(runs.data(), n, false);
  EXPECT_TRUE(pa.check_invariants());
}

}  // namespace
}  // namespace blimp::mm::test
