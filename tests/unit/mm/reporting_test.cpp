// Free page reporting: isolation, return, reported/zero marks, the notification hook.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "arena.h"

namespace blimp::mm::test {
namespace {

// The "host": discards a run (reads as zero afterwards).
void discard(const PageRun& r) {
  std::memset(reinterpret_cast<void*>(r.base), 0, r.pages * kPageSize);
}

TEST(Reporting, IsolatedBlocksAreNeverHandedOut) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  auto shape = free_shape(pa);
  // Leave some small blocks around.
  PhysAddr small = pa.alloc_pages(0).value();
  PageRun runs[64];
  size_t n = pa.isolate_unreported(9, runs, 64);
  ASSERT_GT(n, 0u);
  uint64_t isolated = 0;
  std::set<PhysAddr> iso_pages;
  for (size_t i = 0; i < n; ++i) {
    isolated += runs[i].pages;
    EXPECT_EQ(runs[i].pages % 512, 0u);
    for (uint64_t p = 0; p < runs[i].pages; ++p) {
      iso_pages.insert(runs[i].base + p * kPageSize);
      ASSERT_EQ(pa.owner_of(runs[i].base + p * kPageSize), Owner::Isolated);
    }
  }
  EXPECT_EQ(pa.stats().isolated_bytes, isolated * kPageSize);
  EXPECT_EQ(pa.unreported_free_pages(9), 0u);
  EXPECT_TRUE(pa.check_invariants());
  // Allocate everything else: nothing isolated comes back, in any way.
  std::vector<PhysAddr> got;
  for (;;) {
    auto a = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
    if (a.is_error()) break;
    EXPECT_EQ(iso_pages.count(a.value()), 0u);
    got.push_back(a.value());
  }
  PageRun b[4];
  EXPECT_EQ(pa.take_pages(100, Owner::Balloon, b, 4), 0u);
  for (PhysAddr p : got) pa.free_pages(p, 0);
  // The host discards; the blocks come back reported and zero.
  for (size_t i = 0; i < n; ++i) discard(runs[i]);
  pa.return_isolated(runs, n, true);
  EXPECT_TRUE(pa.check_invariants(true));
  MemoryStats s = pa.stats();
  EXPECT_EQ(s.reported_bytes, isolated * kPageSize);
  EXPECT_EQ(s.pages_reported, isolated);
  EXPECT_EQ(s.isolated_bytes, 0u);
  EXPECT_TRUE(pa.is_known_zero(runs[0].base));
  // Reported blocks are not isolated again.
  PageRun again[4];
  EXPECT_EQ(pa.isolate_unreported(9, again, 4), 0u);
  pa.free_pages(small, 0);
  EXPECT_EQ(free_shape(pa), shape);
}

TEST(Reporting, ReportedBlocksStayAllocatableAndLoseTheMark) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  PageRun runs[16];
  size_t n = pa.isolate_unreported(kMaxOrder, runs, 16);
  ASSERT_GT(n, 0u);
  for (size_t i = 0; i < n; ++i) discard(runs[i]);
  pa.return_isolated(runs, n, true);
  uint64_t reported = pa.stats().reported_bytes;
  // Exhaust the unreported memory: then the app gets reported (zero) blocks.
  std::vector<PhysAddr> v;
  while (pa.stats().reported_bytes == reported) {
    auto a = pa.alloc_pages(0, Owner::App, kAllocZero | kAllocNoReclaim);
    ASSERT_FALSE(a.is_error());
    v.push_back(a.value());
  }
  EXPECT_EQ(pa.stats().reported_bytes, reported - kPageSize);
  EXPECT_EQ(pa.stats().zero_skips, 1u);
  EXPECT_TRUE(pa.check_invariants(true));
  // A freed page merging with reported buddies makes the block unreported again.
  pa.free_pages(v.back(), 0);
  EXPECT_LT(pa.stats().reported_bytes, reported);
  EXPECT_TRUE(pa.check_invariants(true));
  for (size_t i = 0; i + 1 < v.size(); ++i) pa.free_pages(v[i], 0);
  EXPECT_TRUE(pa.check_invariants(true));
}

TEST(Reporting, UnknownDiscardedContentAndFailedReportsDoNotMarkZero) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  pa.set_discarded_content_unknown(true);
  PageRun runs[16];
  size_t n = pa.isolate_unreported(kMaxOrder, runs, 16);
  ASSERT_GT(n, 0u);
  pa.return_isolated(runs, n, true);
  EXPECT_FALSE(pa.is_known_zero(runs[0].base));
  EXPECT_GT(pa.stats().reported_bytes, 0u);
  // A failed report puts blocks back unreported, as they were.
  pa.set_discarded_content_unknown(false);
  PhysAddr warm = pa.alloc_pages(kMaxOrder).value();
  pa.free_pages(warm, kMaxOrder);
  n = pa.isolate_unreported(kMaxOrder, runs, 16);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(runs[0].base, warm);
  pa.return_isolated(runs, n, false);
  EXPECT_EQ(pa.unreported_free_pages(kMaxOrder), kMaxOrderPages);
  EXPECT_EQ(pa.alloc_pages(kMaxOrder).value(), warm);  // still warm
  EXPECT_TRUE(pa.check_invariants());
}

TEST(Reporting, ReserveIsKept) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  uint64_t free_pages = pa.free_pages_count();
  pa.set_reporting_reserve(free_pages - 2 * kMaxOrderPages);
  PageRun runs[16];
  size_t n = pa.isolate_unreported(kMaxOrder, runs, 16);
  uint64_t got = 0;
  for (size_t i = 0; i < n; ++i) got += runs[i].pages;
  EXPECT_EQ(got, 2 * kMaxOrderPages);
  pa.return_isolated(runs, n, false);
}

TEST(Reporting, MaxRunsAndColdFirst) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  PhysAddr w = pa.alloc_pages(kMaxOrder).value();
  pa.free_pages(w, kMaxOrder);  // warm: isolated last
  // Room for two blocks: the coldest two, in one run (they are adjacent), not the warm one.
  pa.set_reporting_reserve(pa.free_pages_count() - 2 * kMaxOrderPages);
  PageRun runs[2];
  size_t n = pa.isolate_unreported(kMaxOrder, runs, 2);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(runs[0].pages, 2 * kMaxOrderPages);
  EXPECT_FALSE(w >= runs[0].base && w < runs[0].base + runs[0].pages * kPageSize);
  pa.return_isolated(runs, n, false);
  // Checkerboard of free 4 MiB blocks: max_runs bounds the batch.
  pa.set_reporting_reserve(0);
  std::vector<PhysAddr> big;
  for (;;) {
    auto a = pa.alloc_pages(kMaxOrder, Owner::App, kAllocNoReclaim);
    if (a.is_error()) break;
    big.push_back(a.value());
  }
  std::sort(big.begin(), big.end());
  for (size_t i = 0; i < big.size(); i += 2) pa.free_pages(big[i], kMaxOrder);
  n = pa.isolate_unreported(kMaxOrder, runs, 2);
  ASSERT_EQ(n, 2u);
  EXPECT_EQ(runs[0].pages + runs[1].pages, 2 * kMaxOrderPages);
  EXPECT_EQ(pa.unreported_free_pages(kMaxOrder),
            (big.size() + 1) / 2 * kMaxOrderPages - 2 * kMaxOrderPages);
  pa.return_isolated(runs, n, false);
  for (size_t i = 1; i < big.size(); i += 2) pa.free_pages(big[i], kMaxOrder);
  // Bogus returns are ignored (logged), not fatal.
  PageRun bogus{w, kMaxOrderPages};
  pa.return_isolated(&bogus, 1, true);
  EXPECT_EQ(pa.stats().reported_bytes, 0u);
  EXPECT_TRUE(pa.check_invariants());
}

struct HookLog {
  std::vector<uint64_t> fired;
  static void hook(uint64_t pages, void* ctx) {
    static_cast<HookLog*>(ctx)->fired.push_back(pages);
  }
};

TEST(Reporting, HookFiresOnceWhenThresholdIsReached) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  // Take every 2 MiB+ block, then free them one by one.
  std::vector<PhysAddr> blocks;
  for (;;) {
    auto a = pa.alloc_pages(9, Owner::App, kAllocNoReclaim);
    if (a.is_error()) break;
    blocks.push_back(a.value());
  }
  HookLog log;
  pa.set_report_hook(&HookLog::hook, &log, 9, 3 * 512);
  pa.free_pages(blocks[0], 9);
  pa.free_pages(blocks[1], 9);
  EXPECT_TRUE(log.fired.empty());
  pa.free_pages(blocks[2], 9);
  ASSERT_EQ(log.fired.size(), 1u);
  EXPECT_GE(log.fired[0], 3u * 512);
  pa.free_pages(blocks[3], 9);
  EXPECT_EQ(log.fired.size(), 1u);  // edge-triggered
  // The driver reports; isolate re-arms.
  PageRun runs[16];
  size_t n = pa.isolate_unreported(9, runs, 16);
  pa.return_isolated(runs, n, true);
  for (size_t i = 4; i < 7 && i < blocks.size(); ++i) pa.free_pages(blocks[i], 9);
  EXPECT_EQ(log.fired.size(), 2u);
  for (size_t i = 7; i < blocks.size(); ++i) pa.free_pages(blocks[i], 9);
  EXPECT_TRUE(pa.check_invariants());
}

}  // namespace
}  // namespace blimp::mm::test
