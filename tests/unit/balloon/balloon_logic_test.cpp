#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <set>
#include <vector>

#include "drivers/balloon/balloon_policy.h"
#include "drivers/balloon/balloon_stats.h"
#include "drivers/balloon/pfn_list.h"

namespace {

using namespace blimp::balloon;
using blimp::mm::PageRun;

TEST(BalloonStats, EveryStandardTagWithAllocatorValues) {
  blimp::mm::MemoryStats s{};
  s.total_bytes = 1024ull << 20;
  s.balloon_bytes = 256ull << 20;
  s.free_bytes = 300ull << 20;
  s.available_bytes = 400ull << 20;
  s.cache_bytes = 100ull << 20;
  s.alloc_stalls = 7;
  s.alloc_failures = 2;
  s.direct_scan_pages = 900;
  s.direct_reclaim_pages = 800;
  StatEntry e[kMaxStats];
  size_t n = build_stats(s, e);
  std::set<uint16_t> tags;
  for (size_t i = 0; i < n; i++) tags.insert(e[i].tag);
  for (uint16_t t = 0; t <= 15; t++) EXPECT_TRUE(tags.count(t)) << "missing tag " << t;
  auto value = [&](uint16_t tag) {
    for (size_t i = 0; i < n; i++)
      if (e[i].tag == tag) return e[i].value;
    ADD_FAILURE() << "no tag " << tag;
    return uint64_t(0);
  };
  EXPECT_EQ(value(kStatTotalMemory), 768ull << 20);  // the balloon is not the guest's memory
  EXPECT_EQ(value(kStatFreeMemory), 300ull << 20);
  EXPECT_EQ(value(kStatAvailableMemory), 400ull << 20);
  EXPECT_EQ(value(kStatDiskCaches), 100ull << 20);
  EXPECT_EQ(value(kStatAllocStalls), 7u);
  EXPECT_EQ(value(kStatOomKills), 2u);
  // Tags 12-15 in bytes, as Linux sends them (pages_to_bytes); 10 and 11 are counts.
  EXPECT_EQ(value(kStatDirectScans), 900u * 4096);
  EXPECT_EQ(value(kStatDirectReclaims), 800u * 4096);
  EXPECT_EQ(value(kStatAsyncScans), 0u);
  EXPECT_EQ(value(kStatAsyncReclaims), 0u);
  EXPECT_EQ(value(kStatMajorFaults), 0u);
}

TEST(BalloonStats, SwapTagsAreBytes) {
  blimp::mm::MemoryStats s{};
  s.swap_in = 3;
  s.swap_out = 5;
  StatEntry e[kMaxStats];
  size_t n = build_stats(s, e);
  uint64_t in = 0, out = 0;
  for (size_t i = 0; i < n; i++) {
    if (e[i].tag == kStatSwapIn) in = e[i].value;
    if (e[i].tag == kStatSwapOut) out = e[i].value;
  }
  EXPECT_EQ(in, 3u * 4096);
  EXPECT_EQ(out, 5u * 4096);
}

TEST(BalloonStats, WireLayoutIsPacked) {
  StatEntry e{kStatFreeMemory, 0x1122334455667788ull};
  const auto* b = reinterpret_cast<const uint8_t*>(&e);
  EXPECT_EQ(b[0], 4);
  EXPECT_EQ(b[1], 0);
  EXPECT_EQ(b[2], 0x88);
  EXPECT_EQ(b[9], 0x11);
}

TEST(PfnCursor, WalksRunsAcrossBuffers) {
  PageRun runs[] = {{0x100000, 3}, {0x200000, 0}, {0x300000, 2}};
  PfnCursor c(runs, 3);
  uint32_t buf[2];
  std::vector<uint32_t> all;
  while (!c.done()) {
    size_t n = c.fill(buf, 2);
    ASSERT_GT(n, 0u);
    all.insert(all.end(), buf, buf + n);
  }
  EXPECT_EQ(all, (std::vector<uint32_t>{0x100, 0x101, 0x102, 0x300, 0x301}));
}

TEST(PfnCursor, SkipsPfnsBeyond32Bits) {
  PageRun runs[] = {{(1ull << 44) - 4096, 2}};  // PFN 2^32-1 and 2^32
  PfnCursor c(runs, 1);
  uint32_t buf[4];
  EXPECT_EQ(c.fill(buf, 4), 1u);
  EXPECT_EQ(buf[0], 0xffffffffu);
  EXPECT_EQ(c.unrepresentable(), 1u);
  EXPECT_TRUE(c.done());
}

void* host_page(void*) { return calloc(1, 4096); }
void host_free(void* p, void*) { free(p); }

TEST(SegmentCursor, SplitsRunsLongerThanTheLimit) {
  // 2.5 GiB, an empty run, then 8 KiB: 1 GiB + 1 GiB + 512 MiB + 8 KiB.
  const uint64_t gib = 1ull << 18;  // pages
  PageRun runs[] = {{0x100000000ull, 2 * gib + gib / 2}, {0x50000000, 0}, {0x2000, 2}};
  SegmentCursor c(runs, 3, gib);
  std::vector<PageRun> segs;
  PageRun s;
  while (c.next(s)) segs.push_back(s);
  ASSERT_EQ(segs.size(), 4u);
  EXPECT_EQ(segs[0].base, 0x100000000ull);
  EXPECT_EQ(segs[0].pages, gib);
  EXPECT_EQ(segs[1].base, 0x140000000ull);
  EXPECT_EQ(segs[1].pages, gib);
  EXPECT_EQ(segs[2].base, 0x180000000ull);
  EXPECT_EQ(segs[2].pages, gib / 2);
  EXPECT_EQ(segs[3].base, 0x2000u);
  EXPECT_EQ(segs[3].pages, 2u);
  EXPECT_TRUE(c.done());
  for (const PageRun& p : segs) EXPECT_LE(p.pages << 12, 0xffffffffull);
}

TEST(SegmentCursor, ExactMultipleAndEmptyInput) {
  PageRun runs[] = {{0, 8}};
  SegmentCursor c(runs, 1, 4);
  PageRun s;
  ASSERT_TRUE(c.next(s));
  EXPECT_EQ(s.pages, 4u);
  ASSERT_TRUE(c.next(s));
  EXPECT_EQ(s.base, 4u * 4096);
  EXPECT_TRUE(c.done());
  EXPECT_FALSE(c.next(s));
  SegmentCursor empty(nullptr, 0, 4);
  EXPECT_TRUE(empty.done());
  EXPECT_FALSE(empty.next(s));
}

TEST(RunSet, MergesAdjacentAndPopsFromTheEnd) {
  RunSet s(host_page, host_free, nullptr);
  ASSERT_TRUE(s.push({0x10000, 4}));
  ASSERT_TRUE(s.push({0x14000, 4}));  // adjacent: merged
  ASSERT_TRUE(s.push({0x40000, 2}));
  EXPECT_EQ(s.runs(), 2u);
  EXPECT_EQ(s.pages(), 10u);
  PageRun out[4];
  size_t n = s.pop(3, out, 4);
  ASSERT_EQ(n, 2u);
  EXPECT_EQ(out[0].base, 0x40000u);
  EXPECT_EQ(out[0].pages, 2u);
  EXPECT_EQ(out[1].base, 0x17000u);  // taken from the end of the merged run
  EXPECT_EQ(out[1].pages, 1u);
  EXPECT_EQ(s.pages(), 7u);
}

TEST(RunSet, FailsCleanlyWhenStorageRunsOut) {
  RunSet s([](void*) -> void* { return nullptr; }, host_free, nullptr);
  EXPECT_FALSE(s.push({0x1000, 1}));
  EXPECT_EQ(s.pages(), 0u);
}

TEST(RunSet, RandomisedAgainstAModel) {
  RunSet s(host_page, host_free, nullptr);
  std::mt19937_64 rng(42);
  std::vector<uint64_t> model;  // page addresses, in push order
  uint64_t next = 0x100000;
  for (int step = 0; step < 20000; step++) {
    if (rng() % 3) {
      uint64_t pages = 1 + rng() % 8;
      if (rng() % 2) next += 4096 * (1 + rng() % 4);  // sometimes a gap
      ASSERT_TRUE(s.push({next, pages}));
      for (uint64_t i = 0; i < pages; i++) model.push_back(next + i * 4096);
      next += pages * 4096;
    } else {
      PageRun out[8];
      size_t n = s.pop(1 + rng() % 20, out, 8);
      for (size_t i = 0; i < n; i++) {
        // Each popped run is the tail of the model, in order.
        for (uint64_t p = out[i].pages; p-- > 0;) {
          ASSERT_FALSE(model.empty());
          ASSERT_EQ(model.back(), out[i].base + p * 4096);
          model.pop_back();
        }
      }
    }
    ASSERT_EQ(s.pages(), model.size());
  }
}

TEST(BalloonPolicy, InflateStopsAtTheFloor) {
  EXPECT_EQ(plan_inflate(100, 0, 1000, 50).pages, 100u);
  EXPECT_FALSE(plan_inflate(100, 0, 1000, 50).limited);
  auto p = plan_inflate(2000, 0, 1000, 50);
  EXPECT_EQ(p.pages, 950u);
  EXPECT_TRUE(p.limited);
  EXPECT_EQ(plan_inflate(10, 20, 1000, 50).pages, 0u);
  EXPECT_EQ(plan_inflate(100, 0, 40, 50).pages, 0u);
  EXPECT_TRUE(plan_inflate(100, 0, 40, 50).limited);
}

TEST(BalloonPolicy, FloorAndOomStep) {
  EXPECT_EQ(default_floor_pages(1024), 2048u);         // tiny guest: at least 8 MiB
  EXPECT_EQ(default_floor_pages(1ull << 20), 16384u);  // 4 GiB: 128 MiB capped to 64 MiB
  EXPECT_EQ(default_floor_pages(262144), 8192u);       // 1 GiB: 32 MiB
  EXPECT_EQ(plan_oom_deflate(1, 100000), 4096u);       // at least 16 MiB
  EXPECT_EQ(plan_oom_deflate(10000, 100000), 10000u);
  EXPECT_EQ(plan_oom_deflate(10000, 50), 50u);  // never more than held
}

}  // namespace
