// The one-byte transitions of mm/page_states/protocol.h, each side on its own.
#include "mm/page_states/protocol.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

namespace blimp::mm::page_states {
namespace {

TEST(PageStateProtocol, ValuesAreTheSpecs) {
  EXPECT_EQ(kStable, 0x00);
  EXPECT_EQ(kUnused, 0x01);
  EXPECT_EQ(kVolatile, 0x03);
  EXPECT_FALSE(is_valid(0x02));  // was POT_VOLATILE: reserved since nothing produced it
  EXPECT_EQ(kDiscardingUnused, 0x41);
  EXPECT_EQ(kDiscardingVolatile, 0x43);
  EXPECT_EQ(kDiscardedUnused, 0x81);
  EXPECT_EQ(kDiscardedVolatile, 0x83);
  int valid = 0;
  for (int v = 0; v < 256; ++v) valid += is_valid(static_cast<uint8_t>(v));
  EXPECT_EQ(valid, 7);
}

TEST(PageStateProtocol, MakeStableReportsWhatItReplaced) {
  for (uint8_t from : {kStable, kUnused, kVolatile, kDiscardedUnused, kDiscardedVolatile}) {
    volatile uint8_t b = from;
    EXPECT_EQ(make_stable(&b), from) << state_name(from);
    EXPECT_EQ(b, kStable);
  }
}

TEST(PageStateProtocol, MakeUnusedKeepsDiscardedFreePagesKnownZero) {
  struct Case {
    uint8_t from, to;
  } cases[] = {{kStable, kUnused},
               {kUnused, kUnused},
               {kDiscardedUnused, kDiscardedUnused},
               {kVolatile, kUnused},
               {kDiscardedVolatile, kUnused}};
  for (auto c : cases) {
    volatile uint8_t b = c.from;
    make_unused(&b);
    EXPECT_EQ(b, c.to) << state_name(c.from);
  }
}

TEST(PageStateProtocol, PinAndUnpin) {
  volatile uint8_t b = kStable;
  unpin(&b);
  EXPECT_EQ(b, kVolatile);
  EXPECT_TRUE(pin(&b));
  EXPECT_EQ(b, kStable);
  b = kDiscardedVolatile;
  EXPECT_FALSE(pin(&b));
  EXPECT_EQ(b, kStable);
}

TEST(PageStateProtocol, HostClaimsOnlyUnusedAndVolatile) {
  std::vector<uint8_t> s = {kStable,   kUnused,   kUnused,          0x02,
                            kVolatile, kVolatile, kDiscardedUnused, kDiscardedVolatile,
                            0x55,      kUnused};
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  uint64_t n = host_claim(s.data(), s.size(), ~0ull, true, [&](uint64_t f, uint64_t c) {
    runs.emplace_back(f, c);
    return true;
  });
  EXPECT_EQ(n, 5u);
  std::vector<std::pair<uint64_t, uint64_t>> want = {{1, 2}, {4, 2}, {9, 1}};
  EXPECT_EQ(runs, want);
  std::vector<uint8_t> after = {kStable,
                                kDiscardingUnused,
                                kDiscardingUnused,
                                0x02,
                                kDiscardingVolatile,
                                kDiscardingVolatile,
                                kDiscardedUnused,
                                kDiscardedVolatile,
                                0x55,
                                kDiscardingUnused};
  EXPECT_EQ(s, after);
  uint64_t du = 0, dv = 0;
  host_finish(s.data(), 0, 6, true, &du, &dv);
  host_finish(s.data(), 9, 1, false, &du, &dv);
  EXPECT_EQ(du, 2u);
  EXPECT_EQ(dv, 2u);
  std::vector<uint8_t> done = {kStable,
                               kDiscardedUnused,
                               kDiscardedUnused,
                               0x02,
                               kDiscardedVolatile,
                               kDiscardedVolatile,
                               kDiscardedUnused,
                               kDiscardedVolatile,
                               0x55,
                               kUnused};
  EXPECT_EQ(s, done);
}

TEST(PageStateProtocol, HostHonoursPoisonAndMaxPages) {
  std::vector<uint8_t> s = {kUnused, kVolatile, kUnused, kVolatile, kVolatile};
  uint64_t runs = 0;
  EXPECT_EQ(host_claim(s.data(), s.size(), 2, false,
                       [&](uint64_t, uint64_t) {
                         ++runs;
                         return true;
                       }),
            2u);
  EXPECT_EQ(runs, 2u);
  EXPECT_EQ(s[0], kUnused);
  EXPECT_EQ(s[2], kUnused);
  EXPECT_EQ(s[4], kVolatile);
}

TEST(PageStateProtocol, GuestWaitsOutADiscardInProgress) {
  for (uint8_t claimed : {kDiscardingUnused, kDiscardingVolatile}) {
    for (bool discarded : {true, false}) {
      alignas(64) uint8_t b = claimed;
      std::thread host([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        host_finish(&b, 0, 1, discarded);
      });
      uint64_t spins = 0;
      uint8_t was = make_stable(&b, &spins);
      host.join();
      EXPECT_GT(spins, 0u);
      EXPECT_EQ(b, kStable);
      EXPECT_EQ(is_discarded(was), discarded);
    }
  }
}

}  // namespace
}  // namespace blimp::mm::page_states
