#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>

#include "arena.h"
#include "mm/self_test.h"

namespace blimp::mm::test {
namespace {

TEST(PageAllocator, InitCarvesMetadataAndFreesTheRest) {
  Fixture f(64 * kMiB);
  PageAllocator& pa = *f.pa;
  uint64_t all = 64 * kMiB / kPageSize;
  uint64_t meta = (all * sizeof(PageInfo) + kPageSize - 1) / kPageSize;
  EXPECT_EQ(pa.total_pages(), all - meta);
  EXPECT_EQ(pa.free_pages_count(), all - meta);
  EXPECT_TRUE(pa.check_invariants());
  // 16 blocks of 4 MiB, one of them holding the metadata.
  EXPECT_EQ(pa.free_block_count(kMaxOrder), 15u);
  EXPECT_EQ(pa.owner_of(f.arena.base()), Owner::Reserved);
  EXPECT_EQ(pa.owner_of(f.arena.end() - 1), Owner::Free);
  MemoryStats s = pa.stats();
  EXPECT_EQ(s.total_bytes, (all - meta) * kPageSize);
  EXPECT_EQ(s.free_bytes, s.total_bytes);
  EXPECT_EQ(s.reserved_bytes, meta * kPageSize);
  EXPECT_EQ(pa.init(nullptr, 0).is_error(), true);  // only once
}

TEST(PageAllocator, RangesAreSortedTrimmedAndMerged) {
  Arena a(32 * kMiB);
  PhysAddr b = a.base();
  // Unsorted, unaligned, overlapping, adjacent, with holes, and an empty one.
  MemoryRange r[] = {
      {b + 20 * kMiB + 100, 4 * kMiB},  // unaligned both ends
      {b + kMiB, 3 * kMiB},             // [1, 4)
      {b + 3 * kMiB, 2 * kMiB},         // overlaps: [1, 5)
      {b + 5 * kMiB, 3 * kMiB},         // adjacent: [1, 8)
      {b + 10 * kMiB, 0},               // empty
      {b + 12 * kMiB + 4096, 6000},     // one whole page survives alignment
  };
  PageAllocator pa;
  ASSERT_FALSE(pa.init(r, std::size(r)).is_error());
  EXPECT_TRUE(pa.check_invariants());
  EXPECT_FALSE(pa.contains(b));
  EXPECT_TRUE(pa.contains(b + kMiB));
  EXPECT_TRUE(pa.contains(b + 8 * kMiB - 1));
  EXPECT_FALSE(pa.contains(b + 8 * kMiB));
  EXPECT_FALSE(pa.contains(b + 20 * kMiB));  // trimmed partial page
  EXPECT_TRUE(pa.contains(b + 20 * kMiB + 4096));
  EXPECT_TRUE(pa.contains(b + 12 * kMiB + 4096));  // exactly one page survives
  EXPECT_EQ(pa.first_pfn(), (b + kMiB) >> 12);
  EXPECT_EQ(pa.end_pfn(), (b + 24 * kMiB) >> 12);  // the last range, trimmed to whole pages
  EXPECT_TRUE(pa.contains((pa.end_pfn() - 1) << 12));
  EXPECT_FALSE(pa.contains(pa.end_pfn() << 12));
  uint64_t pages = 7 * 256 + (4 * kMiB - 4096) / 4096 + 1;
  EXPECT_EQ(pa.total_pages() + pa.stats().reserved_bytes / kPageSize, pages);
  // Blocks never span a hole: allocate everything and check each block lies in one range.
  std::vector<PhysAddr> got;
  for (;;) {
    auto x = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
    if (x.is_error()) break;
    got.push_back(x.value());
  }
  EXPECT_EQ(got.size(), pa.total_pages());
  for (PhysAddr p : got) EXPECT_TRUE(pa.contains(p));
  for (PhysAddr p : got) pa.free_pages(p, 0);
  EXPECT_TRUE(pa.check_invariants());
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
}

TEST(PageAllocator, BlocksAreNaturallyAligned) {
  Fixture f(32 * kMiB);
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    auto a = f.pa->alloc_pages(o);
    ASSERT_FALSE(a.is_error());
    EXPECT_EQ(a.value() % bytes_of_order(o), 0u) << "order " << o;
    EXPECT_EQ(f.pa->owner_of(a.value()), Owner::Kernel);
    f.pa->free_pages(a.value(), o);
  }
  EXPECT_TRUE(f.pa->check_invariants());
}

TEST(PageAllocator, MisuseIsCaught) {
  Fixture f(16 * kMiB);
  auto a = f.pa->alloc_pages(2);
  ASSERT_FALSE(a.is_error());
  EXPECT_THROW(f.pa->free_pages(a.value(), 1), std::runtime_error);         // wrong order
  EXPECT_THROW(f.pa->free_pages(a.value() + 4096, 0), std::runtime_error);  // inside a block
  EXPECT_THROW(f.pa->free_pages(f.arena.base() - 4 * kMiB, 0), std::runtime_error);  // unmanaged
  EXPECT_TRUE(f.pa->alloc_pages(kMaxOrder + 1).is_error());
  EXPECT_EQ(f.pa->alloc_pages(0, Owner::Free).error(), Error::InvalidArgument);
}

TEST(PageAllocator, DoubleFreeIsCaught) {
  Fixture f(16 * kMiB);
  auto a = f.pa->alloc_pages(3);
  ASSERT_FALSE(a.is_error());
  f.pa->free_pages(a.value(), 3);
  EXPECT_THROW(f.pa->free_pages(a.value(), 3), std::runtime_error);
}

// Random alloc/free over a large arena: every live block carries a pattern that must survive
// until it is freed (no overlap), metadata stays consistent, and at the end everything coalesces
// back to the shape it had after init (no leak, full merging).
void random_alloc_free(uint64_t seed, uint64_t arena_bytes, int steps) {
  SCOPED_TRACE(testing::Message() << "seed " << seed);
  Fixture f(arena_bytes);
  PageAllocator& pa = *f.pa;
  auto shape = free_shape(pa);
  std::mt19937_64 rng(seed);
  struct Live {
    PhysAddr a;
    uint64_t pages;
    bool run;
  };
  std::vector<Live> live;
  uint64_t live_pages = 0;
  for (int step = 0; step < steps; ++step) {
    bool do_alloc = live.empty() || rng() % 100 < 55;
    if (do_alloc) {
      // Mostly small, sometimes large, sometimes exact-size runs.
      unsigned o = rng() % 4 == 0 ? rng() % (kMaxOrder + 1) : rng() % 3;
      bool run = rng() % 5 == 0;
      uint64_t pages = run ? 1 + rng() % (rng() % 8 == 0 ? 3000 : 40) : pages_of_order(o);
      Owner ow = rng() % 2 ? Owner::App : Owner::Kernel;
      auto r =
          run ? pa.alloc_run(pages, ow, kAllocNoReclaim) : pa.alloc_pages(o, ow, kAllocNoReclaim);
      if (r.is_error()) {
        ASSERT_EQ(r.error(), Error::NoMemory);
        // Only a genuine lack of a big enough block may fail.
        if (pages <= kMaxOrderPages) {
          for (unsigned k = order_for_pages(pages); k <= kMaxOrder; ++k)
            ASSERT_EQ(pa.free_block_count(k), 0u) << "order " << k;
        }
        continue;
      }
      fill(r.value(), pages, seed);
      live.push_back({r.value(), pages, run});
      live_pages += pages;
    } else {
      size_t i = rng() % live.size();
      Live l = live[i];
      live[i] = live.back();
      live.pop_back();
      ASSERT_TRUE(check(l.a, l.pages, seed)) << "block " << std::hex << l.a << " corrupted";
      if (l.run) {
        pa.free_run(l.a, l.pages);
      } else {
        pa.free_pages(l.a, order_for_pages(l.pages));
      }
      live_pages -= l.pages;
    }
    ASSERT_EQ(pa.free_pages_count() + live_pages, pa.total_pages());
    if (step % 1000 == 0) {
      ASSERT_TRUE(pa.check_invariants());
    }
  }
  ASSERT_TRUE(pa.check_invariants());
  for (auto& l : live) {
    ASSERT_TRUE(check(l.a, l.pages, seed));
    if (l.run) {
      pa.free_run(l.a, l.pages);
    } else {
      pa.free_pages(l.a, order_for_pages(l.pages));
    }
  }
  EXPECT_TRUE(pa.check_invariants());
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
  EXPECT_EQ(free_shape(pa), shape);
  MemoryStats s = pa.stats();
  EXPECT_EQ(s.allocations, s.frees);
}

TEST(PageAllocator, RandomAllocFree) { random_alloc_free(1, 48 * kMiB, 20000); }

// Fuzz-style: BLIMP_MM_SEED picks the seed (and BLIMP_MM_FUZZ_ROUNDS how many consecutive ones),
// so a failure seen anywhere can be replayed exactly.
TEST(PageAllocator, SeededFuzz) {
  uint64_t seed = 0x5eed;
  int rounds = 4;
  if (const char* s = std::getenv("BLIMP_MM_SEED")) seed = std::strtoull(s, nullptr, 0);
  if (const char* s = std::getenv("BLIMP_MM_FUZZ_ROUNDS")) rounds = std::atoi(s);
  for (int i = 0; i < rounds; ++i) random_alloc_free(seed + i, 24 * kMiB, 6000);
}

TEST(PageAllocator, AllocRunExactSizes) {
  Fixture f(64 * kMiB);
  PageAllocator& pa = *f.pa;
  auto shape = free_shape(pa);
  uint64_t before = pa.free_pages_count();
  auto a = pa.alloc_run(3);
  ASSERT_FALSE(a.is_error());
  EXPECT_EQ(pa.free_pages_count(), before - 3);
  EXPECT_EQ(a.value() % (2 * kPageSize), 0u);
  // Larger than the largest block: contiguous max-order blocks.
  uint64_t big = kMaxOrderPages * 3 + 17;
  auto b = pa.alloc_run(big, Owner::App, kAllocZero);
  ASSERT_FALSE(b.is_error());
  EXPECT_EQ(pa.free_pages_count(), before - 3 - big);
  for (uint64_t i = 0; i < big * kPageSize; i += 4096)
    ASSERT_EQ(reinterpret_cast<uint8_t*>(b.value())[i], 0);
  fill(b.value(), big, 7);
  EXPECT_TRUE(pa.check_invariants());
  // Partial frees of a run are allowed.
  pa.free_run(b.value() + 5 * kPageSize, 1000);
  EXPECT_TRUE(check(b.value(), 5, 7));
  EXPECT_TRUE(pa.check_invariants());
  pa.free_run(b.value(), 5);
  pa.free_run(b.value() + 1005 * kPageSize, big - 1005);
  pa.free_run(a.value(), 3);
  EXPECT_TRUE(pa.check_invariants());
  EXPECT_EQ(free_shape(pa), shape);
  EXPECT_TRUE(pa.alloc_run(pa.total_pages() + 1).is_error());
}

TEST(PageAllocator, WarmPagesGoToTheAppColdToTheBalloon) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  // The app works on some memory and frees it: it is warm now.
  std::vector<PhysAddr> used;
  for (int i = 0; i < 300; ++i) used.push_back(pa.alloc_pages(0, Owner::App).value());
  std::set<PhysAddr> warm(used.begin(), used.end());
  for (PhysAddr p : used) pa.free_pages(p, 0);
  EXPECT_TRUE(pa.check_invariants());
  // The app gets warm memory back.
  auto again = pa.alloc_pages(0, Owner::App);
  EXPECT_EQ(warm.count(again.value()), 1u);
  pa.free_pages(again.value(), 0);
  // A page that cannot merge (its buddy is in use) is handed out again first: LIFO.
  PhysAddr x = pa.alloc_pages(0, Owner::App).value();
  PhysAddr y = pa.alloc_pages(0, Owner::App).value();
  pa.free_pages(x, 0);
  EXPECT_EQ(pa.alloc_pages(0, Owner::App).value(), x);
  pa.free_pages(x, 0);
  pa.free_pages(y, 0);
  // The balloon takes half of memory and gets none of the warm pages.
  std::vector<PageRun> runs(256);
  size_t n = pa.take_pages(pa.free_pages_count() / 2, Owner::Balloon, runs.data(), runs.size());
  ASSERT_GT(n, 0u);
  for (size_t i = 0; i < n; ++i)
    for (uint64_t p = 0; p < runs[i].pages; ++p)
      EXPECT_EQ(warm.count(runs[i].base + p * kPageSize), 0u);
  // And the app still gets warm pages after that.
  for (int i = 0; i < 100; ++i) {
    PhysAddr p = pa.alloc_pages(0, Owner::App).value();
    EXPECT_EQ(warm.count(p), 1u);
  }
  EXPECT_TRUE(pa.check_invariants());
}

TEST(PageAllocator, TakePagesPrefersLargeBlocksAndReturnsRuns) {
  Fixture f(64 * kMiB);
  PageAllocator& pa = *f.pa;
  auto shape = free_shape(pa);
  // Fragment: allocate everything as single pages, free every other page of the first 8 MiB worth
  // and all of the rest.
  std::vector<PhysAddr> all;
  for (;;) {
    auto x = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
    if (x.is_error()) break;
    all.push_back(x.value());
  }
  std::sort(all.begin(), all.end());
  std::vector<PhysAddr> kept;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i < 2048 && i % 2 == 0)
      kept.push_back(all[i]);
    else
      pa.free_pages(all[i], 0);
  }
  ASSERT_TRUE(pa.check_invariants());
  uint64_t free_before = pa.free_pages_count();
  uint64_t big_blocks = pa.free_block_count(kMaxOrder);
  ASSERT_GT(big_blocks, 4u);
  std::vector<PageRun> runs(64);
  uint64_t want = 4 * kMaxOrderPages + 3;
  size_t n = pa.take_pages(want, Owner::Balloon, runs.data(), runs.size());
  uint64_t took = 0;
  for (size_t i = 0; i < n; ++i) took += runs[i].pages;
  EXPECT_EQ(took, want);
  EXPECT_EQ(pa.free_block_count(kMaxOrder), big_blocks - 4);  // whole 4 MiB blocks first
  EXPECT_LE(n, 4u);  // adjacent blocks merged into runs: the 4 blocks + up to 2 small pieces
  EXPECT_GE(runs[0].pages, kMaxOrderPages);
  for (size_t i = 0; i < n; ++i)
    for (uint64_t p = 0; p < runs[i].pages; p += 1)
      ASSERT_EQ(pa.owner_of(runs[i].base + p * kPageSize), Owner::Balloon);
  EXPECT_EQ(pa.stats().balloon_bytes, want * kPageSize);
  EXPECT_TRUE(pa.check_invariants());
  // Give back in a different split: first page by page, then odd-sized pieces.
  for (uint64_t p = 0; p < 5; ++p) {
    PageRun one{runs[0].base + p * kPageSize, 1};
    pa.give_back(&one, 1, false);
  }
  ASSERT_TRUE(pa.check_invariants());
  PageRun piece{runs[0].base + 5 * kPageSize, 333};
  pa.give_back(&piece, 1, false);
  runs[0].base += 338 * kPageSize;
  runs[0].pages -= 338;
  pa.give_back(runs.data(), n, false);
  EXPECT_TRUE(pa.check_invariants());
  EXPECT_EQ(pa.free_pages_count(), free_before);
  EXPECT_EQ(pa.stats().balloon_bytes, 0u);
  EXPECT_EQ(pa.bad_give_back_pages(), 0u);
  for (PhysAddr p : kept) pa.free_pages(p, 0);
  EXPECT_EQ(free_shape(pa), shape);
}

TEST(PageAllocator, TakePagesStopsAtMaxRuns) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  // Checkerboard of single free pages: no two free pages adjacent.
  std::vector<PhysAddr> all;
  for (;;) {
    auto x = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
    if (x.is_error()) break;
    all.push_back(x.value());
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i < all.size(); i += 2) pa.free_pages(all[i], 0);
  uint64_t free_before = pa.free_pages_count();
  PageRun runs[10];
  EXPECT_EQ(pa.take_pages(1000, Owner::Balloon, runs, 10), 10u);
  for (auto& r : runs) EXPECT_EQ(r.pages, 1u);
  EXPECT_EQ(pa.free_pages_count(), free_before - 10);
  EXPECT_TRUE(pa.check_invariants());
  pa.give_back(runs, 10, false);
  EXPECT_EQ(pa.free_pages_count(), free_before);
}

TEST(PageAllocator, GiveBackRejectsPagesTheBalloonDoesNotHold) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  PhysAddr app = pa.alloc_pages(0, Owner::App).value();
  PageRun taken;
  ASSERT_EQ(pa.take_pages(4, Owner::Balloon, &taken, 1), 1u);
  PageRun bogus[] = {{app, 1}, {f.arena.base() - 16 * kMiB, 8}, {taken.base, 4}, {taken.base, 4}};
  pa.give_back(bogus, 4, false);
  EXPECT_EQ(pa.bad_give_back_pages(), 1u + 8 + 4);
  EXPECT_EQ(pa.owner_of(app), Owner::App);
  EXPECT_EQ(pa.stats().balloon_bytes, 0u);
  EXPECT_TRUE(pa.check_invariants());
}

TEST(PageAllocator, ZeroOnAllocateSkipsKnownZeroPages) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  // Boot memory is garbage: kAllocZero must write it.
  PhysAddr a = pa.alloc_pages(4, Owner::App, kAllocZero).value();
  for (uint64_t i = 0; i < bytes_of_order(4); ++i) ASSERT_EQ(reinterpret_cast<uint8_t*>(a)[i], 0);
  EXPECT_EQ(pa.stats().zero_fills, 16u);
  std::memset(reinterpret_cast<void*>(a), 0x77, bytes_of_order(4));
  pa.free_pages(a, 4);
  // Balloon takes everything; the "host" discards (zeroes) it and gives it back.
  std::vector<PageRun> runs(64);
  size_t n = pa.take_pages(pa.free_pages_count(), Owner::Balloon, runs.data(), runs.size());
  for (size_t i = 0; i < n; ++i)
    std::memset(reinterpret_cast<void*>(runs[i].base), 0, runs[i].pages * kPageSize);
  pa.give_back(runs.data(), n, true);
  EXPECT_TRUE(pa.check_invariants(/*verify_zeroed=*/true));
  EXPECT_TRUE(pa.is_known_zero(a));
  EXPECT_EQ(pa.stats().reported_bytes, pa.total_pages() * kPageSize);
  PhysAddr b = pa.alloc_pages(4, Owner::App, kAllocZero).value();
  EXPECT_EQ(pa.stats().zero_fills, 16u);
  EXPECT_EQ(pa.stats().zero_skips, 16u);
  for (uint64_t i = 0; i < bytes_of_order(4); ++i) ASSERT_EQ(reinterpret_cast<uint8_t*>(b)[i], 0);
  // Once handed out the block is no longer known zero, nor reported.
  EXPECT_FALSE(pa.is_known_zero(b));
  EXPECT_EQ(pa.stats().reported_bytes, (pa.total_pages() - 16) * kPageSize);
  std::memset(reinterpret_cast<void*>(b), 1, 4096);
  pa.free_pages(b, 4);
  // Merging a dirty block with zero buddies loses the zero mark (conservative)...
  EXPECT_FALSE(pa.is_known_zero(b));
  PhysAddr c = pa.alloc_pages(4, Owner::App, kAllocZero).value();
  EXPECT_EQ(c, b);  // warm first
  for (uint64_t i = 0; i < bytes_of_order(4); ++i) ASSERT_EQ(reinterpret_cast<uint8_t*>(c)[i], 0);
  EXPECT_EQ(pa.stats().zero_fills, 32u);
  pa.free_pages(c, 4);
  EXPECT_TRUE(pa.check_invariants(true));
}

TEST(PageAllocator, PreferColdTakesReportedZeroBlocks) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  PhysAddr warm = pa.alloc_pages(0, Owner::App).value();
  pa.free_pages(warm, 0);
  PageRun r;
  ASSERT_EQ(pa.take_pages(kMaxOrderPages, Owner::Balloon, &r, 1), 1u);
  std::memset(reinterpret_cast<void*>(r.base), 0, r.pages * kPageSize);
  pa.give_back(&r, 1, true);
  PhysAddr cold = pa.alloc_pages(0, Owner::App, kAllocPreferCold | kAllocZero).value();
  EXPECT_GE(cold, r.base);
  EXPECT_LT(cold, r.base + r.pages * kPageSize);
  EXPECT_EQ(pa.stats().zero_skips, 1u);
  EXPECT_EQ(pa.alloc_pages(0, Owner::App).value(), warm);
}

// A fake page-state array kept by the state hook must always agree with the allocator.
struct StateArray {
  PhysAddr base;
  std::vector<Owner> state;
  uint64_t calls = 0;
  bool zero_answer = false;
  static bool hook(PhysAddr first, size_t count, Owner o, void* ctx) {
    auto* s = static_cast<StateArray*>(ctx);
    ++s->calls;
    for (size_t i = 0; i < count; ++i) s->state[(first - s->base) / kPageSize + i] = o;
    return s->zero_answer && !is_free_owner(o);
  }
};

bool same_state(Owner a, Owner b) { return a == b || (is_free_owner(a) && is_free_owner(b)); }

TEST(PageAllocator, StateHookSeesEveryTransition) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  StateArray sa{f.arena.base(), std::vector<Owner>(f.arena.size / kPageSize, Owner::Free)};
  for (uint64_t i = 0; i < sa.state.size(); ++i)
    sa.state[i] = pa.owner_of(f.arena.base() + i * kPageSize);
  pa.set_state_hook(&StateArray::hook, &sa);
  std::mt19937_64 rng(99);
  std::vector<std::pair<PhysAddr, uint64_t>> live, runs_live;
  std::vector<PageRun> balloon;
  for (int step = 0; step < 3000; ++step) {
    switch (rng() % 7) {
      case 0:
      case 1: {
        unsigned o = rng() % 5;
        auto a = pa.alloc_pages(o, rng() % 2 ? Owner::App : Owner::Volatile, kAllocNoReclaim);
        if (!a.is_error()) live.push_back({a.value(), o});
        break;
      }
      case 2: {
        uint64_t n = 1 + rng() % 50;
        auto a = pa.alloc_run(n, Owner::Kernel, kAllocNoReclaim);
        if (!a.is_error()) runs_live.push_back({a.value(), n});
        break;
      }
      case 3:
        if (!live.empty()) {
          size_t i = rng() % live.size();
          pa.free_pages(live[i].first, static_cast<unsigned>(live[i].second));
          live.erase(live.begin() + i);
        } else if (!runs_live.empty()) {
          pa.free_run(runs_live.back().first, runs_live.back().second);
          runs_live.pop_back();
        }
        break;
      case 4: {
        PageRun r[4];
        size_t n = pa.take_pages(1 + rng() % 700, Owner::Balloon, r, 4);
        balloon.insert(balloon.end(), r, r + n);
        break;
      }
      case 5:
        if (!balloon.empty()) {
          PageRun r = balloon.back();
          balloon.pop_back();
          uint64_t half = r.pages / 2;
          if (half) {
            PageRun h{r.base, half};
            pa.give_back(&h, 1, rng() % 2);
            balloon.push_back({r.base + half * kPageSize, r.pages - half});
          } else {
            pa.give_back(&r, 1, false);
          }
        }
        break;
      case 6: {
        PageRun r[8];
        size_t n = pa.isolate_unreported(rng() % 4, r, 8);
        for (size_t i = 0; i < n; ++i)
          for (uint64_t p = 0; p < r[i].pages; ++p)
            ASSERT_EQ(sa.state[(r[i].base - sa.base) / kPageSize + p], Owner::Isolated);
        pa.return_isolated(r, n, rng() % 2);
        break;
      }
    }
    if (step % 500 == 0) {
      ASSERT_TRUE(pa.check_invariants());
      for (uint64_t i = 0; i < sa.state.size(); ++i)
        ASSERT_TRUE(same_state(sa.state[i], pa.owner_of(sa.base + i * kPageSize)))
            << "page " << i << " step " << step;
    }
  }
  for (uint64_t i = 0; i < sa.state.size(); ++i)
    ASSERT_TRUE(same_state(sa.state[i], pa.owner_of(sa.base + i * kPageSize)));
  EXPECT_GT(sa.calls, 1000u);
}

TEST(PageAllocator, StateHookCanReportZeroPages) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  StateArray sa{f.arena.base(), std::vector<Owner>(f.arena.size / kPageSize, Owner::Free)};
  sa.zero_answer = true;  // as if the host had discarded every unused page
  pa.set_state_hook(&StateArray::hook, &sa);
  PhysAddr a = pa.alloc_pages(3, Owner::App, kAllocZero).value();
  EXPECT_EQ(pa.stats().zero_skips, 8u);
  EXPECT_EQ(pa.stats().zero_fills, 0u);
  EXPECT_EQ(reinterpret_cast<uint8_t*>(a)[0], 0xa5);  // untouched: the hook vouched for it
  pa.free_pages(a, 3);
}

TEST(PageAllocator, SelfTestCoversAllFreeMemory) {
  Fixture f(32 * kMiB);
  auto shape = free_shape(*f.pa);
  SelfTestResult r = self_test(*f.pa, 20 * kMiB);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.bytes_tested, 20 * kMiB);
  EXPECT_EQ(r.bad_words, 0u);
  r = self_test(*f.pa, UINT64_MAX);
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.bytes_tested, f.pa->total_pages() * kPageSize);
  EXPECT_EQ(free_shape(*f.pa), shape);
}

TEST(PageAllocator, BootMemoryComesOutInLongRuns) {
  Fixture f(64 * kMiB);
  PageAllocator& pa = *f.pa;
  // Cold blocks come off the list tails in descending address order: runs must still merge.
  PageRun runs[16];
  size_t n = pa.take_pages(12 * kMaxOrderPages, Owner::Balloon, runs, 16);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(runs[0].pages, 12 * kMaxOrderPages);
  pa.give_back(runs, n, false);
  n = pa.isolate_unreported(kMaxOrder, runs, 16);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(runs[0].pages, 15 * kMaxOrderPages);
  pa.return_isolated(runs, n, true);
  EXPECT_TRUE(pa.check_invariants());
}

TEST(PageAllocator, OddRunsUseContiguousSmallerBlocks) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  // A 5-page run with no free order-3 block to be cut from, but adjacent free smaller blocks.
  std::vector<PhysAddr> all;
  for (;;) {
    auto a = pa.alloc_pages(1, Owner::App, kAllocNoReclaim);
    if (a.is_error()) break;
    all.push_back(a.value());
  }
  std::sort(all.begin(), all.end());
  // Keep every fourth pair: each 8-page group then has 6 free pages (an order-1 and an order-2
  // block side by side) and no aligned free 8.
  for (size_t i = 0; i < all.size(); ++i)
    if (i % 4 != 0) pa.free_pages(all[i], 1);
  ASSERT_EQ(pa.free_block_count(3), 0u);
  auto r = pa.alloc_run(5, Owner::App, kAllocNoReclaim);
  ASSERT_FALSE(r.is_error());
  EXPECT_TRUE(pa.check_invariants());
  pa.free_run(r.value(), 5);
  for (size_t i = 0; i < all.size(); i += 4) pa.free_pages(all[i], 1);
  EXPECT_TRUE(pa.check_invariants());
}

}  // namespace
}  // namespace blimp::mm::test
