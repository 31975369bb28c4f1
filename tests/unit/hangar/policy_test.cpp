// The idle-tax policy against made-up guests.
#include <gtest/gtest.h>

#include <numeric>

#include "balloon_policy.h"

using namespace hangar;

namespace {
constexpr uint64_t MiB = 1ull << 20;

VmObservation guest(const std::string& name, uint64_t memory_mib, uint64_t used_mib) {
  VmObservation o;
  o.name = name;
  o.memory = memory_mib * MiB;
  o.actual = o.memory;
  GuestStats s;
  s.total_memory = o.memory;
  s.available_memory = (memory_mib - used_mib) * MiB;
  s.free_memory = s.available_memory;
  s.major_faults = 0;
  s.last_update = 1;
  o.stats = s;
  return o;
}

uint64_t target_or_current(const PolicyDecision& d, const VmObservation& o) {
  return d.target ? *d.target : (o.target ? *o.target : *o.actual);
}

// Runs the policy for `rounds` periods, applying its targets as the fleet would.
std::vector<uint64_t> settle(BalloonPolicy& p, std::vector<VmObservation>& vms,
                             std::optional<uint64_t> budget, int rounds = 20) {
  std::vector<uint64_t> out(vms.size());
  for (int r = 0; r < rounds; ++r) {
    auto d = p.decide(vms, budget);
    for (size_t i = 0; i < vms.size(); ++i) {
      out[i] = target_or_current(d[i], vms[i]);
      if (d[i].target) vms[i].target = vms[i].actual = *d[i].target;
    }
  }
  return out;
}
}  // namespace

TEST(IdleTaxPolicy, NoBudgetMeansNoBallooning) {
  IdleTaxPolicy p(PolicyConfig{});
  auto d = p.decide({guest("a", 512, 100), guest("b", 512, 400)}, std::nullopt);
  EXPECT_FALSE(d[0].target);
  EXPECT_FALSE(d[1].target);
}

TEST(IdleTaxPolicy, FitsBudgetTakingFromTheIdleGuest) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {guest("idle", 512, 50), guest("busy", 512, 400)};
  auto t = settle(p, vms, 768 * MiB);
  EXPECT_LE(t[0] + t[1], 768 * MiB);
  EXPECT_LT(t[0], t[1]);             // the idle guest pays the tax
  EXPECT_GE(t[0], (50 + 32) * MiB);  // never below working set + floor
  EXPECT_GE(t[1], (400 + 32) * MiB);
}

TEST(IdleTaxPolicy, ZeroTaxIsProportionalShare) {
  PolicyConfig c;
  c.tax_rate = 0.0;
  IdleTaxPolicy p(c);
  std::vector<VmObservation> vms = {guest("a", 512, 50), guest("b", 512, 50)};
  auto t = settle(p, vms, 600 * MiB);
  EXPECT_NEAR(static_cast<double>(t[0]), static_cast<double>(t[1]), 4.0 * MiB);
}

TEST(IdleTaxPolicy, SharesWeighTheSplit) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {guest("gold", 512, 64), guest("bronze", 512, 64)};
  vms[0].shares = 4000;
  vms[1].shares = 1000;
  auto t = settle(p, vms, 700 * MiB);
  EXPECT_GT(t[0], t[1]);
}

TEST(IdleTaxPolicy, NeverBelowWorkingSetEvenIfBudgetTooSmall) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {guest("a", 512, 300), guest("b", 512, 300)};
  auto d = p.decide(vms, 400 * MiB);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_GE(d[i].protect, 332 * MiB);
    if (d[i].target) {
      EXPECT_GE(*d[i].target, 332 * MiB);
    }
    EXPECT_NE(d[i].reason.find("budget below"), std::string::npos);
  }
}

TEST(IdleTaxPolicy, ConfiguredMinimumIsRespected) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {guest("a", 512, 10), guest("b", 512, 10)};
  vms[0].min_memory = 300 * MiB;
  auto t = settle(p, vms, 400 * MiB);
  EXPECT_GE(t[0], 300 * MiB);
}

TEST(IdleTaxPolicy, GuestWithoutStatsIsNeverInflated) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {guest("a", 512, 10), guest("nostats", 512, 10)};
  vms[1].stats.reset();
  auto t = settle(p, vms, 700 * MiB);
  EXPECT_EQ(t[1], 512 * MiB);
  EXPECT_LE(t[0], 700 * MiB - 512 * MiB);
}

TEST(IdleTaxPolicy, InflateIsStepLimitedDeflateIsNot) {
  PolicyConfig c;
  c.max_step = 64 * MiB;
  IdleTaxPolicy p(c);
  std::vector<VmObservation> vms = {guest("a", 1024, 10)};
  auto d = p.decide(vms, 200 * MiB);
  ASSERT_TRUE(d[0].target);
  EXPECT_EQ(*d[0].target, 960 * MiB);
  // Budget lifted: straight back to full size in one step.
  vms[0].target = vms[0].actual = 300 * MiB;
  d = p.decide(vms, std::nullopt);
  ASSERT_TRUE(d[0].target);
  EXPECT_EQ(*d[0].target, 1024 * MiB);
}

TEST(IdleTaxPolicy, HysteresisStopsFlapping) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {guest("a", 512, 100), guest("b", 512, 100)};
  settle(p, vms, 700 * MiB);
  // Small wobble in the working set: no new targets.
  for (int i = 0; i < 10; ++i) {
    uint64_t wobble = (i % 2 ? 4 : 0) * MiB;
    for (auto& v : vms) {
      v.stats->available_memory = *v.target - 100 * MiB - wobble;
      v.stats->total_memory = *v.target;
    }
    auto d = p.decide(vms, 700 * MiB);
    EXPECT_FALSE(d[0].target) << i;
    EXPECT_FALSE(d[1].target) << i;
  }
}

TEST(IdleTaxPolicy, PressureGrowsTheGuestAtOnce) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {guest("a", 1024, 100), guest("b", 1024, 100)};
  settle(p, vms, 1024 * MiB);
  const uint64_t before = *vms[0].target;
  vms[0].previous = vms[0].stats;
  vms[0].stats->major_faults = 50;
  auto d = p.decide(vms, 1024 * MiB);
  ASSERT_TRUE(d[0].target);
  EXPECT_GT(*d[0].target, before);
  EXPECT_NE(d[0].reason.find("major faults"), std::string::npos);
  // The other guest gives way so the budget still holds, when it can.
  EXPECT_TRUE(d[1].target);
}

TEST(IdleTaxPolicy, LowAvailableMemoryIsPressure) {
  IdleTaxPolicy p(PolicyConfig{});
  auto vm = guest("a", 512, 500);
  vm.actual = vm.target = 512 * MiB;
  vm.stats->available_memory = 4 * MiB;
  auto d = p.decide({vm}, 1024 * MiB);
  EXPECT_NE(d[0].reason.find("below half the floor"), std::string::npos);
}

// A guest whose cache fills its memory reports it all as available: without a reclaim signal it
// looks as idle as a guest with nothing to do.
VmObservation cache_guest(const std::string& name, uint64_t memory_mib, uint64_t used_mib,
                          bool reclaiming) {
  auto o = guest(name, memory_mib, used_mib);
  o.stats->free_memory = 1 * MiB;
  o.stats->disk_caches = (memory_mib - used_mib - 1) * MiB;
  o.stats->alloc_stalls = o.stats->direct_reclaims = 1000;
  o.previous = o.stats;
  if (reclaiming) o.stats->direct_reclaims = 5000;
  return o;
}

// Applies the targets and lets each guest's memory fill up again, as a cache does.
std::vector<uint64_t> settle_caches(BalloonPolicy& p, std::vector<VmObservation>& vms,
                                    uint64_t budget, const std::vector<bool>& hungry) {
  std::vector<uint64_t> out(vms.size());
  for (int r = 0; r < 40; ++r) {
    auto d = p.decide(vms, budget);
    for (size_t i = 0; i < vms.size(); ++i) {
      out[i] = target_or_current(d[i], vms[i]);
      if (d[i].target) vms[i].target = vms[i].actual = *d[i].target;
      GuestStats& s = *vms[i].stats;
      s.total_memory = out[i];
      if (hungry[i]) {
        s.free_memory = 1 * MiB;
        s.available_memory = out[i] - 10 * MiB;
      } else {
        s.free_memory = s.available_memory = out[i] - 10 * MiB;
      }
    }
  }
  return out;
}

TEST(IdleTaxPolicy, ReclaimedCacheCountsAsActive) {
  IdleTaxPolicy p(PolicyConfig{});
  // One guest squeezing its cache, two with the same cache size left alone: same stats but
  // the reclaim counter.
  std::vector<VmObservation> vms = {cache_guest("hot", 512, 10, true),
                                    cache_guest("cold1", 512, 10, false),
                                    cache_guest("cold2", 512, 10, false)};
  auto t = settle(p, vms, 768 * MiB, 1);
  EXPECT_GT(t[0], t[1] + 64 * MiB) << "the reclaiming guest keeps more of its cache";
  EXPECT_NE(p.decide(vms, 768 * MiB)[0].reason.find("caches under reclaim"), std::string::npos);
}

TEST(IdleTaxPolicy, HungryCacheTakesWhatIdleGuestsLeave) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {cache_guest("big", 512, 10, true), guest("small1", 512, 10),
                                    guest("small2", 512, 10)};
  auto t = settle_caches(p, vms, 768 * MiB, {true, false, false});
  EXPECT_GE(t[0], 400 * MiB) << "the hungry guest gets well above the even 256 MiB split";
  // Within the hysteresis band (16 MiB by default) per guest of the budget.
  EXPECT_LE(t[0] + t[1] + t[2], 768 * MiB + 3 * PolicyConfig{}.hysteresis)
      << t[0] / MiB << " " << t[1] / MiB << " " << t[2] / MiB;
}

TEST(IdleTaxPolicy, HungryCachesSplitTheBudgetInsteadOfOvercommitting) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {cache_guest("a", 512, 10, true),
                                    cache_guest("b", 512, 10, true),
                                    cache_guest("c", 512, 10, true)};
  auto t = settle_caches(p, vms, 768 * MiB, {true, true, true});
  for (auto x : t) {
    EXPECT_GE(x, 240 * MiB);
    EXPECT_LE(x, 272 * MiB);
  }
}

// A cache given enough stops reclaiming; it must not look idle at once (and be shrunk back into
// reclaiming), only after reclaim_hold quiet periods.
TEST(IdleTaxPolicy, ReclaimKeepsCountingForTheHoldPeriods) {
  PolicyConfig c;
  c.reclaim_hold = 3;
  IdleTaxPolicy p(c);
  std::vector<VmObservation> vms = {cache_guest("hot", 512, 10, true),
                                    cache_guest("cold", 512, 10, false)};
  auto reason = [&] { return p.decide(vms, 768 * MiB)[0].reason; };
  EXPECT_NE(reason().find("caches under reclaim"), std::string::npos);
  vms[0].previous = vms[0].stats;  // the counters stop rising
  for (int i = 0; i < 3; ++i)
    EXPECT_NE(reason().find("caches recently under reclaim"), std::string::npos) << i;
  EXPECT_EQ(reason().find("reclaim"), std::string::npos);
}

TEST(IdleTaxPolicy, FailingAllocationsArePressure) {
  IdleTaxPolicy p(PolicyConfig{});
  std::vector<VmObservation> vms = {guest("a", 1024, 100), guest("b", 1024, 100)};
  settle(p, vms, 1024 * MiB);
  const uint64_t before = *vms[0].target;
  vms[0].stats->oom_kills = 0;
  vms[0].previous = vms[0].stats;
  vms[0].stats->oom_kills = 3;
  auto d = p.decide(vms, 1024 * MiB);
  ASSERT_TRUE(d[0].target);
  EXPECT_GT(*d[0].target, before);
  EXPECT_NE(d[0].reason.find("allocations failing"), std::string::npos);
}

TEST(NoPolicy, NeverTouches) {
  NoPolicy p;
  auto d = p.decide({guest("a", 512, 10)}, 100 * MiB);
  EXPECT_FALSE(d[0].target);
}
