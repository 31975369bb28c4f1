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

// --- Guests that publish page ages (x-blimp-balloon-working-set) ---

constexpr uint64_t kPagesPerMiB = MiB / 4096;

AgeBucket bucket(uint32_t min_age_s, uint64_t unused_mib, uint64_t volatile_mib = 0) {
  return {min_age_s, unused_mib * kPagesPerMiB, volatile_mib * kPagesPerMiB};
}

WorkingSetReport aged(uint64_t stable_mib, std::vector<AgeBucket> buckets,
                      uint64_t discarded_mib = 0) {
  WorkingSetReport r;
  r.ages = true;
  r.clock_s = 1000;
  r.stable = stable_mib * kPagesPerMiB;
  r.discarded = discarded_mib * kPagesPerMiB;
  r.buckets = std::move(buckets);
  return r;
}

uint64_t idle_mib(const WorkingSetReport& r, uint64_t guest_mib, Millis idle_after) {
  auto m = measure_idle(r, guest_mib * MiB, idle_after);
  EXPECT_TRUE(m);
  EXPECT_EQ(m->working_set + m->idle, guest_mib * MiB);
  return m->idle / MiB;
}

TEST(MeasureIdle, OnlyBucketsWhollyPastTheThresholdAreIdle) {
  // Buckets hold ages [min, 2 min): the one of 8 s has pages of 8 to 15 s.
  auto r = aged(100, {bucket(0, 4), bucket(4, 8), bucket(8, 16), bucket(16, 32, 64)});
  using std::chrono::seconds;
  EXPECT_EQ(idle_mib(r, 224, seconds(8)), 16u + 96u);
  EXPECT_EQ(idle_mib(r, 224, seconds(10)), 96u) << "8-15 s may be younger than 10 s: not idle";
  EXPECT_EQ(idle_mib(r, 224, seconds(16)), 96u);
  EXPECT_EQ(idle_mib(r, 224, seconds(17)), 0u) << "16-31 s may be younger than 17 s";
  EXPECT_EQ(idle_mib(r, 224, seconds(1)), 8u + 16u + 96u) << "only age 0 is younger than 1 s";
}

TEST(MeasureIdle, DiscardedPagesAreIdleAndBalloonPagesAreNotGuestMemory) {
  // 512 MiB of RAM, 256 MiB of it in the balloon (discarded by the host), 100 MiB of free
  // memory reported and discarded: the guest has 256 MiB, of which 120 MiB is in use or young.
  auto r = aged(100, {bucket(0, 20), bucket(64, 0, 36)}, 256 + 100);
  auto m = measure_idle(r, 256 * MiB, std::chrono::seconds(8));
  ASSERT_TRUE(m);
  EXPECT_EQ(m->working_set, 120 * MiB);
  EXPECT_EQ(m->idle, 136 * MiB);  // 36 MiB of cold volatile pages, 100 MiB discarded
}

TEST(MeasureIdle, NeverMoreThanTheGuestHas) {
  // Pages the balloon just took are free in the array, and young, until the host discards them.
  auto r = aged(100, {bucket(0, 300)});
  auto m = measure_idle(r, 256 * MiB, std::chrono::seconds(8));
  ASSERT_TRUE(m);
  EXPECT_EQ(m->working_set, 256 * MiB);
  EXPECT_EQ(m->idle, 0u);
}

TEST(MeasureIdle, NothingWithoutAges) {
  auto r = aged(100, {bucket(0, 300)});
  r.ages = false;  // a guest with page_ages=off, a Linux guest, nothing registered
  EXPECT_FALSE(measure_idle(r, 512 * MiB, std::chrono::seconds(8)));
}

TEST(MeasureIdle, LyingCountsSaturate) {
  WorkingSetReport r;
  r.ages = true;
  r.stable = UINT64_MAX;
  r.invalid = UINT64_MAX;
  r.buckets = {{0, UINT64_MAX, UINT64_MAX}, {4096, UINT64_MAX, 1}};
  auto m = measure_idle(r, 512 * MiB, std::chrono::seconds(8));
  ASSERT_TRUE(m);
  EXPECT_EQ(m->working_set, 512 * MiB);
  EXPECT_EQ(m->idle, 0u);
}

// Two guests whose stats are the same (300 MiB in use by total - available: 40 MiB of their own
// and a 260 MiB volatile cache, which is not available memory), one whose cache has not been
// touched for half a minute and one whose cache is hot.
std::vector<VmObservation> cold_and_hot_caches() {
  std::vector<VmObservation> vms = {guest("cold", 512, 300), guest("hot", 512, 300)};
  vms[0].working_set = aged(40, {bucket(0, 212), bucket(32, 0, 260)});
  vms[1].working_set = aged(40, {bucket(0, 212, 260)});
  return vms;
}

TEST(IdleTaxPolicy, MeasuredIdleMemoryIsTaxed) {
  IdleTaxPolicy p(PolicyConfig{});
  auto vms = cold_and_hot_caches();
  auto t = settle(p, vms, 768 * MiB);
  EXPECT_GT(t[1], t[0] + 64 * MiB)
      << "the hot cache keeps more: " << t[0] / MiB << " " << t[1] / MiB;
  EXPECT_LE(t[0] + t[1], 768 * MiB);
  const auto d = p.decide(vms, 768 * MiB);
  EXPECT_NE(d[0].reason.find("working set 252 MiB measured from page ages (80 MiB idle 8 s or "
                             "longer; 300 MiB by total - available)"),
            std::string::npos)
      << d[0].reason;
  // Without ages the two are the same guest and split the budget evenly.
  IdleTaxPolicy blind(PolicyConfig{});
  auto same = cold_and_hot_caches();
  for (auto& v : same) v.working_set.reset();
  auto e = settle(blind, same, 768 * MiB);
  EXPECT_NEAR(static_cast<double>(e[0]), static_cast<double>(e[1]), 4.0 * MiB);
}

TEST(IdleTaxPolicy, MeasuredWorkingSetDoesNotLowerWhatAGuestKeeps) {
  // The cold cache is idle, but the balloon cannot take volatile memory: what the guest keeps
  // is still what it says it cannot give back (300 MiB) plus the floor.
  IdleTaxPolicy p(PolicyConfig{});
  auto vms = cold_and_hot_caches();
  auto t = settle(p, vms, 400 * MiB);
  EXPECT_GE(t[0], 332 * MiB);
  EXPECT_GE(t[1], 332 * MiB);
  EXPECT_GE(p.decide(vms, 400 * MiB)[0].protect, 332 * MiB);
}

TEST(IdleTaxPolicy, MeasuredGuestNeedsNoReclaimHold) {
  PolicyConfig c;
  c.reclaim_hold = 3;
  IdleTaxPolicy p(c);
  // A reclaiming cache in ordinary memory: STABLE, so all of it is working set.
  std::vector<VmObservation> vms = {cache_guest("hot", 512, 10, true),
                                    cache_guest("cold", 512, 10, false)};
  vms[0].working_set = aged(510, {bucket(0, 1), bucket(64, 1)});
  auto d = p.decide(vms, 768 * MiB);
  EXPECT_NE(d[0].reason.find("working set 511 MiB measured"), std::string::npos) << d[0].reason;
  EXPECT_EQ(d[0].reason.find("reclaim"), std::string::npos) << d[0].reason;
  // Its ages stop coming (QEMU refused): back to the guess, which knows the cache was squeezed.
  vms[0].working_set.reset();
  vms[0].previous = vms[0].stats;
  d = p.decide(vms, 768 * MiB);
  EXPECT_NE(d[0].reason.find("caches recently under reclaim"), std::string::npos) << d[0].reason;
}

TEST(IdleTaxPolicy, GuestsWithoutAgesKeepTodaysDecisions) {
  // The same fleet twice, one with answers that carry no ages (page_ages=off, a Linux guest):
  // every decision of every round is the same.
  IdleTaxPolicy a(PolicyConfig{}), b(PolicyConfig{});
  std::vector<VmObservation> va = {cache_guest("big", 512, 10, true), guest("small1", 512, 10),
                                   guest("small2", 512, 100)};
  auto vb = va;
  for (auto& v : vb) {
    v.working_set = aged(100, {bucket(0, 100), bucket(64, 300)});
    v.working_set->ages = false;
  }
  for (int r = 0; r < 40; ++r) {
    auto da = a.decide(va, 768 * MiB), db = b.decide(vb, 768 * MiB);
    for (size_t i = 0; i < va.size(); ++i) {
      EXPECT_EQ(da[i].target, db[i].target) << r << " " << i;
      EXPECT_EQ(da[i].protect, db[i].protect) << r << " " << i;
      EXPECT_EQ(da[i].reason, db[i].reason) << r << " " << i;
      if (da[i].target) va[i].target = va[i].actual = vb[i].target = vb[i].actual = *da[i].target;
    }
    if (r == 10) {  // the reclaim stops
      va[0].previous = va[0].stats;
      vb[0].previous = vb[0].stats;
    }
  }
}

TEST(NoPolicy, NeverTouches) {
  NoPolicy p;
  auto d = p.decide({guest("a", 512, 10)}, 100 * MiB);
  EXPECT_FALSE(d[0].target);
}
