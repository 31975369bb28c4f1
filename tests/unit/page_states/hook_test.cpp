// The allocator's state hook keeping a page-state array current, the known-zero feedback, and
// the volatile-memory API, against a real PageAllocator over host memory and the fake device.
#include <gtest/gtest.h>

#include <vector>

#include "fake_host.h"
#include "mm/page_states/page_states.h"
#include "mm/page_states/volatile_memory.h"

namespace blimp::mm::page_states {
namespace {

using test::fake_sweep;
using test::kMiB;
using test::Ram;

struct HookFixture : ::testing::Test {
  using SweepResult = test::SweepResult;
  HookFixture() : ram(16 * kMiB), states(ram.pages(), 0xee) {
    MemoryRange r{ram.base(), ram.size};
    if (pa.init(&r, 1).is_error()) std::abort();
    pa.set_reporting_reserve(0);
    array.attach(states.data(), ram.base() >> kPageShift, ram.pages());
    array.sync_and_hook(pa);
  }
  ~HookFixture() override { array.unhook(pa); }

  uint8_t state(PhysAddr a) { return *array.byte_of(a); }
  SweepResult sweep(uint64_t fail_every = 0) {
    return fake_sweep(states.data(), states.size(), ram.mem, fail_every);
  }
  // Every byte agrees with the allocator: free-like owners UNUSED (or discarded unused),
  // allocated STABLE, volatile VOLATILE/STABLE/DISCARDED_VOLATILE.
  void expect_consistent() {
    for (uint64_t i = 0; i < ram.pages(); ++i) {
      PhysAddr a = ram.base() + i * kPageSize;
      uint8_t s = states[i];
      if (!pa.contains(a)) {
        EXPECT_EQ(s, kStable) << i;
        continue;
      }
      uint8_t want = state_for_owner(pa.owner_of(a));
      if (want == kUnused) {
        EXPECT_TRUE(s == kUnused || s == kDiscardedUnused) << i << " " << state_name(s);
      } else if (want == kStable) {
        EXPECT_EQ(s, kStable) << i << " " << state_name(s);
      }
    }
  }

  Ram ram;
  std::vector<uint8_t> states;
  PageAllocator pa;
  PageStateArray array;
};

TEST_F(HookFixture, SyncMatchesTheAllocator) {
  expect_consistent();
  uint64_t unused = 0;
  for (uint8_t s : states) unused += s == kUnused;
  EXPECT_EQ(unused, pa.free_pages_count());
}

TEST_F(HookFixture, AllocateAndFreeFollowTheAllocator) {
  PhysAddr a = pa.alloc_pages(3).value();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(state(a + i * kPageSize), kStable);
  PhysAddr r = pa.alloc_run(1500, Owner::App).value();  // beyond 4 MiB: contiguous path
  for (int i = 0; i < 1500; ++i) ASSERT_EQ(state(r + i * kPageSize), kStable);
  expect_consistent();
  pa.free_pages(a, 3);
  pa.free_run(r, 1500);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(state(a + i * kPageSize), kUnused);
  expect_consistent();
}

TEST_F(HookFixture, HostDiscardsOnlyFreePagesAndTheyComeBackKnownZero) {
  std::vector<PhysAddr> held;
  for (int i = 0; i < 64; ++i) {
    PhysAddr a = pa.alloc_pages(1).value();
    std::memset(reinterpret_cast<void*>(a), 0x5a, 2 * kPageSize);
    held.push_back(a);
  }
  SweepResult s = sweep();
  EXPECT_EQ(s.claimed, pa.free_pages_count());
  EXPECT_EQ(s.discarded_unused, s.claimed);
  for (PhysAddr a : held) {
    auto* p = reinterpret_cast<uint8_t*>(a);
    for (uint64_t j = 0; j < 2 * kPageSize; ++j) ASSERT_EQ(p[j], 0x5a);
  }
  expect_consistent();
  // Every free page is now DISCARDED_UNUSED: a zeroed allocation skips the memset.
  uint64_t skips = pa.stats().zero_skips;
  PhysAddr z = pa.alloc_pages(4, Owner::App, kAllocZero).value();
  EXPECT_EQ(pa.stats().zero_skips, skips + 16);
  for (uint64_t j = 0; j < 16 * kPageSize; ++j) ASSERT_EQ(reinterpret_cast<uint8_t*>(z)[j], 0);
  EXPECT_EQ(array.stats().known_zero_pages, 16u);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(state(z + i * kPageSize), kStable);
  // Freed again: UNUSED, no longer known zero; a second sweep takes exactly those.
  pa.free_pages(z, 4);
  EXPECT_EQ(sweep().claimed, 16u);
  for (PhysAddr a : held) pa.free_pages(a, 1);
}

TEST_F(HookFixture, AFailedDiscardIsNotKnownZero) {
  SweepResult s = sweep(/*fail_every=*/1);
  EXPECT_GT(s.put_back, 0u);
  EXPECT_EQ(s.discarded_unused, 0u);
  uint64_t skips = pa.stats().zero_skips;
  PhysAddr z = pa.alloc_pages(2, Owner::App, kAllocZero).value();
  EXPECT_EQ(pa.stats().zero_skips, skips);
  EXPECT_EQ(array.stats().known_zero_pages, 0u);
  for (uint64_t j = 0; j < 4 * kPageSize; ++j) ASSERT_EQ(reinterpret_cast<uint8_t*>(z)[j], 0);
  pa.free_pages(z, 2);
}

TEST_F(HookFixture, BalloonAndReportingPagesAreUnused) {
  sweep();
  PageRun runs[64];
  size_t n = pa.take_pages(1024, Owner::Balloon, runs, 64);
  ASSERT_GT(n, 0u);
  for (size_t i = 0; i < n; ++i)
    for (uint64_t p = 0; p < runs[i].pages; ++p) {
      uint8_t s = state(runs[i].base + p * kPageSize);
      ASSERT_TRUE(s == kUnused || s == kDiscardedUnused) << state_name(s);
    }
  pa.give_back(runs, n, true);
  n = pa.isolate_unreported(0, runs, 64);
  ASSERT_GT(n, 0u);
  pa.return_isolated(runs, n, true);
  expect_consistent();
}

TEST_F(HookFixture, VolatileRegionLosesContentOnlyWhenUnpinned) {
  auto r = allocate_volatile(8, pa, &array).value();
  auto* w = static_cast<uint64_t*>(r.data);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(state(virt_to_phys(w) + i * kPageSize), kStable);
  for (uint64_t j = 0; j < 8 * 512; ++j) w[j] = j * 0x9e3779b97f4a7c15ull;
  // Pinned: the host cannot take it.
  sweep();
  for (uint64_t j = 0; j < 8 * 512; ++j) ASSERT_EQ(w[j], j * 0x9e3779b97f4a7c15ull);
  unpin(r);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(state(virt_to_phys(w) + i * kPageSize), kVolatile);
  // Unpinned and not discarded: intact.
  EXPECT_EQ(pin(r), PinResult::Intact);
  for (uint64_t j = 0; j < 8 * 512; ++j) ASSERT_EQ(w[j], j * 0x9e3779b97f4a7c15ull);
  unpin(r);
  SweepResult s = sweep();
  EXPECT_EQ(s.discarded_volatile, 8u);
  uint64_t lost = 0;
  EXPECT_EQ(pin(r, &lost), PinResult::Lost);
  EXPECT_EQ(lost, 8u);
  for (uint64_t j = 0; j < 8 * 512; ++j) ASSERT_EQ(w[j], 0u);
  EXPECT_EQ(array.stats().pins_lost, 8u);
  unpin(r);
  free_volatile(r);
  EXPECT_FALSE(r.valid());
  expect_consistent();
}

TEST_F(HookFixture, FreeingADiscardedVolatileRegionMakesItUnused) {
  auto r = allocate_volatile(4, pa, &array).value();
  PhysAddr base = virt_to_phys(r.data);
  unpin(r);
  sweep();
  EXPECT_EQ(state(base), kDiscardedVolatile);
  free_volatile(r);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(state(base + i * kPageSize), kUnused);
}

// Page ages (spec section 4.5): a page's stamp is the clock at which it last became
// discardable: freed, or unpinned. Allocation and pinning leave it; staying free keeps it.
struct AgesFixture : HookFixture {
  AgesFixture() : block(sizeof(wire::BlimpAgeHeader) + ram.pages() * sizeof(uint32_t)) {
    header = reinterpret_cast<wire::BlimpAgeHeader*>(block.data());
    header->clock_s = 100;
    array.attach_ages(header, reinterpret_cast<uint32_t*>(header + 1));
  }
  uint32_t stamp_of(PhysAddr a) { return array.stamps()[(a >> kPageShift) - array.base_pfn()]; }
  std::vector<uint8_t> block;
  wire::BlimpAgeHeader* header = nullptr;
};

TEST_F(AgesFixture, AttachStampsEveryPageWithTheClock) {
  for (uint64_t i = 0; i < ram.pages(); ++i) ASSERT_EQ(array.stamps()[i], 100u) << i;
  EXPECT_EQ(array.clock(), 100u);
}

TEST_F(AgesFixture, FreeAndUnpinStampAllocateAndPinDoNot) {
  array.set_clock(200);
  PhysAddr p = pa.alloc_run(4, Owner::App).value();
  EXPECT_EQ(stamp_of(p), 100u);  // allocated: stable pages carry no age
  array.set_clock(300);
  pa.free_run(p, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(stamp_of(p + i * kPageSize), 300u);

  array.set_clock(400);
  auto r = allocate_volatile(2, pa, &array).value();
  PhysAddr v = virt_to_phys(r.data);
  EXPECT_EQ(stamp_of(v), 400u);  // became VOLATILE (then pinned) now
  array.set_clock(450);
  unpin(r);
  EXPECT_EQ(stamp_of(v), 450u);
  EXPECT_EQ(stamp_of(v + kPageSize), 450u);
  array.set_clock(500);
  EXPECT_EQ(pin(r), PinResult::Intact);
  EXPECT_EQ(stamp_of(v), 450u);  // a pin is a use, recorded when the use ends (unpin)
  unpin(r);
  EXPECT_EQ(stamp_of(v), 500u);
  free_volatile(r);
}

TEST_F(AgesFixture, AFreePageThatStaysFreeKeepsItsStamp) {
  PhysAddr p = pa.alloc_run(1, Owner::App).value();
  array.set_clock(150);
  pa.free_run(p, 1);
  array.set_clock(900);
  // Free -> Isolated (reporting) and back: still free since 150.
  EXPECT_TRUE(array.transition(p, 1, Owner::Isolated) == false);
  EXPECT_TRUE(array.transition(p, 1, Owner::Free) == false);
  EXPECT_EQ(stamp_of(p), 150u);
  // A discarded free page is still the same idle page.
  sweep();
  EXPECT_EQ(state(p), kDiscardedUnused);
  EXPECT_FALSE(array.transition(p, 1, Owner::Reported));
  EXPECT_EQ(stamp_of(p), 150u);
}

TEST_F(AgesFixture, DetachedAgesAreNotWritten) {
  array.attach_ages(nullptr, nullptr);
  EXPECT_EQ(array.stamps(), nullptr);
  EXPECT_EQ(array.clock(), 0u);
  array.set_clock(7);  // no block: nothing to publish, no crash
  PhysAddr p = pa.alloc_run(1, Owner::App).value();
  pa.free_run(p, 1);
  auto* stamps = reinterpret_cast<uint32_t*>(header + 1);
  EXPECT_EQ(stamps[(p >> kPageShift) - array.base_pfn()], 100u);
}

TEST(VolatileWithoutPageStates, NothingIsEverLost) {
  Ram ram(8 * kMiB);
  PageAllocator pa;
  MemoryRange mr{ram.base(), ram.size};
  ASSERT_FALSE(pa.init(&mr, 1).is_error());
  auto r = allocate_volatile(2, pa, nullptr).value();
  unpin(r);
  EXPECT_EQ(pin(r), PinResult::Intact);
  free_volatile(r);
}

}  // namespace
}  // namespace blimp::mm::page_states
