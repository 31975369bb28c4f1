// Exhaustion: shrinkers (in registration order), then the OOM handler, then an error.
#include <gtest/gtest.h>

#include <string>

#include "arena.h"

namespace blimp::mm::test {
namespace {

// A cache holding pages it can give back.
struct FakeCache : Shrinker {
  FakeCache(PageAllocator& pa, std::string name, std::vector<std::string>* log)
      : pa(pa), name(std::move(name)), log(log) {}
  bool fill(size_t n) {
    for (size_t i = 0; i < n; ++i) {
      auto a = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
      if (a.is_error()) return false;
      held.push_back(a.value());
    }
    return true;
  }
  size_t count_objects() override { return held.size(); }
  size_t scan_objects(size_t n) override {
    log->push_back(name + ":" + std::to_string(n));
    size_t freed = 0;
    while (freed < n && !held.empty()) {
      pa.free_pages(held.back(), 0);
      held.pop_back();
      ++freed;
    }
    return freed;
  }
  PageAllocator& pa;
  std::string name;
  std::vector<std::string>* log;
  std::vector<PhysAddr> held;
};

// The balloon: holds runs, deflates on OOM.
struct FakeBalloon {
  PageAllocator* pa;
  std::vector<PageRun> runs;
  std::vector<std::string>* log;
  static size_t oom(size_t needed, void* ctx) {
    auto* b = static_cast<FakeBalloon*>(ctx);
    b->log->push_back("oom:" + std::to_string(needed));
    size_t given = 0;
    while (given < needed && !b->runs.empty()) {
      PageRun r = b->runs.back();
      b->runs.pop_back();
      b->pa->give_back(&r, 1, true);
      given += r.pages;
    }
    return given;
  }
};

std::vector<PhysAddr> exhaust(PageAllocator& pa) {
  std::vector<PhysAddr> v;
  for (;;) {
    auto a = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
    if (a.is_error()) return v;
    v.push_back(a.value());
  }
}

// Frees the last `n` pages of `app` (taken by exhaust).
void free_last(PageAllocator& pa, std::vector<PhysAddr>& app, size_t n) {
  for (size_t i = 0; i < n && !app.empty(); ++i) {
    pa.free_pages(app.back(), 0);
    app.pop_back();
  }
}

// A DemandHook counting its calls in an int.
void count_call(void* ctx) { ++*static_cast<int*>(ctx); }

TEST(Reclaim, ShrinkersInOrderThenOomThenError) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  std::vector<std::string> log;
  FakeCache a(pa, "a", &log), b(pa, "b", &log);
  FakeBalloon balloon{&pa, {}, &log};
  pa.register_shrinker(&a);
  pa.register_shrinker(&b);
  pa.set_oom_handler(&FakeBalloon::oom, &balloon);
  // Balloon takes 64 pages, caches hold 40 each, the app the rest.
  PageRun r[8];
  size_t n = pa.take_pages(64, Owner::Balloon, r, 8);
  balloon.runs.assign(r, r + n);
  ASSERT_TRUE(a.fill(40));
  ASSERT_TRUE(b.fill(40));
  auto app = exhaust(pa);
  EXPECT_EQ(pa.stats().available_bytes, 80 * kPageSize);
  EXPECT_EQ(pa.stats().cache_bytes, 80 * kPageSize);

  // 1: shrinker a alone suffices (asked for a batch of 32, not 1 page).
  ASSERT_FALSE(pa.alloc_pages(0, Owner::App).is_error());
  EXPECT_EQ(log, (std::vector<std::string>{"a:32"}));
  EXPECT_EQ(a.held.size(), 8u);
  exhaust(pa);
  // 2: a has 8, then b is asked.
  log.clear();
  ASSERT_FALSE(pa.alloc_pages(4, Owner::App).is_error());  // 16 pages: a's 8 don't make one
  EXPECT_EQ(log, (std::vector<std::string>{"a:8", "b:32"}));
  exhaust(pa);
  // 3: drain b; then the balloon deflates.
  log.clear();
  b.scan_objects(1000);
  exhaust(pa);
  log.clear();
  uint64_t oom_before = pa.stats().oom_events;
  ASSERT_FALSE(pa.alloc_pages(2, Owner::App).is_error());
  EXPECT_EQ(log, (std::vector<std::string>{"oom:4"}));
  EXPECT_EQ(pa.stats().oom_events, oom_before + 1);
  EXPECT_GE(pa.stats().oom_pages, 4u);
  EXPECT_EQ(pa.stats().direct_scan_pages, 32u + 8 + 32);  // a:32, a:8, b:32
  EXPECT_EQ(pa.stats().direct_reclaim_pages, 32u + 8 + 32);
  // 4: kAllocNoOomHook and kAllocNoReclaim.
  exhaust(pa);
  log.clear();
  EXPECT_EQ(pa.alloc_pages(0, Owner::App, kAllocNoOomHook).error(), Error::NoMemory);
  EXPECT_TRUE(log.empty());
  EXPECT_EQ(pa.alloc_pages(0, Owner::App, kAllocNoReclaim).error(), Error::NoMemory);
  // 5: everything exhausted: the OOM handler is asked until it has nothing, then the error.
  balloon.runs.clear();
  log.clear();
  uint64_t failures = pa.stats().alloc_failures;
  uint64_t stalls = pa.stats().alloc_stalls;
  EXPECT_EQ(pa.alloc_pages(0, Owner::App).error(), Error::NoMemory);
  EXPECT_EQ(log, (std::vector<std::string>{"oom:1"}));
  EXPECT_EQ(pa.stats().alloc_failures, failures + 1);
  EXPECT_EQ(pa.stats().alloc_stalls, stalls + 1);
  pa.unregister_shrinker(&a);
  pa.unregister_shrinker(&b);
  for (PhysAddr p : a.held) pa.free_pages(p, 0);
  EXPECT_TRUE(pa.check_invariants());
}

TEST(Reclaim, UnregisteredShrinkerIsNotAsked) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  std::vector<std::string> log;
  FakeCache a(pa, "a", &log), b(pa, "b", &log);
  pa.register_shrinker(&a);
  pa.register_shrinker(&b);
  pa.register_shrinker(&a);  // twice is once
  ASSERT_TRUE(a.fill(10));
  ASSERT_TRUE(b.fill(10));
  pa.unregister_shrinker(&a);
  exhaust(pa);
  ASSERT_FALSE(pa.alloc_pages(0).is_error());
  EXPECT_EQ(log, (std::vector<std::string>{"b:10"}));
  pa.unregister_shrinker(&b);
}

// A balloon demand: the app's allocations shrink the caches (in their own context) until the
// free memory the balloon waits for is there, then the balloon is told.
TEST(Reclaim, BalloonDemandIsMetFromTheCachesByTheAllocatingContext) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  std::vector<std::string> log;
  FakeCache cache(pa, "cache", &log);
  pa.register_shrinker(&cache);
  auto app = exhaust(pa);
  free_last(pa, app, 1000);  // the cache owns 1000 pages
  ASSERT_TRUE(cache.fill(1000));
  ASSERT_EQ(pa.free_pages_count(), 0u);
  free_last(pa, app, 20);  // 20 pages free, as if the app had just freed them
  int told = 0;
  const uint64_t stalls = pa.stats().alloc_stalls, direct = pa.stats().direct_reclaim_pages;
  pa.post_cache_demand(600, count_call, &told);
  EXPECT_EQ(pa.cache_demand().outcome, CacheDemandOutcome::Pending);
  // Free pages exist, but they are the balloon's now: each allocation shrinks the cache first
  // (for the whole deficit: 600 + 1 - 20 pages) until 600 stay free.
  for (int i = 0; i < 4; ++i) {
    auto a = pa.alloc_pages(0, Owner::App);
    ASSERT_FALSE(a.is_error());
    app.push_back(a.value());
  }
  EXPECT_GE(pa.free_pages_count(), 600u);
  EXPECT_EQ(log.front(), "cache:581");
  EXPECT_GE(told, 1);
  EXPECT_EQ(pa.stats().alloc_stalls, stalls) << "the balloon's stalls are not the app's";
  EXPECT_EQ(pa.stats().direct_reclaim_pages, direct);
  EXPECT_GE(pa.stats().balloon_reclaim_pages, 584u);
  CacheDemand d = pa.cache_demand();
  EXPECT_EQ(d.outcome, CacheDemandOutcome::Served);
  EXPECT_EQ(d.asked_pages, 600u);
  EXPECT_EQ(d.given_pages, pa.stats().balloon_reclaim_pages);
  // The balloon takes them; the demand is its to end.
  PageRun r[64];
  size_t n = pa.take_pages(580, Owner::Balloon, r, 64);
  uint64_t taken = 0;
  for (size_t i = 0; i < n; ++i) taken += r[i].pages;
  EXPECT_EQ(taken, 580u);
  d = pa.end_cache_demand();
  EXPECT_EQ(d.outcome, CacheDemandOutcome::Withdrawn);
  EXPECT_EQ(d.given_pages, pa.stats().balloon_reclaim_pages);
  EXPECT_FALSE(pa.cache_demand().in_force());
  pa.give_back(r, n, true);
  pa.unregister_shrinker(&cache);
  for (PhysAddr p : cache.held) pa.free_pages(p, 0);
  for (PhysAddr p : app) pa.free_pages(p, 0);
  EXPECT_TRUE(pa.check_invariants());
}

TEST(Reclaim, BalloonDemandIsDroppedWhenTheCachesAreEmpty) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  std::vector<std::string> log;
  FakeCache cache(pa, "cache", &log);
  pa.register_shrinker(&cache);
  auto app = exhaust(pa);
  free_last(pa, app, 50);
  ASSERT_TRUE(cache.fill(10));
  free_last(pa, app, 30);
  int told = 0;
  pa.post_cache_demand(1000, count_call, &told);
  // The cache's 10 pages cannot make 1000 free: the demand goes, the app gets its page.
  std::vector<PhysAddr> got;
  for (int i = 0; i < 3; ++i) {
    auto a = pa.alloc_pages(0, Owner::App);
    ASSERT_FALSE(a.is_error()) << i;
    got.push_back(a.value());
  }
  EXPECT_EQ(pa.cache_demand().outcome, CacheDemandOutcome::Exhausted);
  EXPECT_EQ(pa.cache_demand().given_pages, 10u);
  EXPECT_GE(told, 1);
  EXPECT_TRUE(cache.held.empty());
  // Ending it keeps the outcome (the balloon does not ask again for this target); forgetting
  // it does not.
  EXPECT_EQ(pa.end_cache_demand().outcome, CacheDemandOutcome::Exhausted);
  pa.forget_cache_demand();
  EXPECT_EQ(pa.cache_demand().outcome, CacheDemandOutcome::None);
  // Allocations that cannot reclaim never wait for a demand.
  pa.post_cache_demand(1000, nullptr, nullptr);
  auto a = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
  ASSERT_FALSE(a.is_error());
  got.push_back(a.value());
  pa.forget_cache_demand();
  pa.unregister_shrinker(&cache);
  for (PhysAddr p : got) pa.free_pages(p, 0);
  for (PhysAddr p : app) pa.free_pages(p, 0);
  EXPECT_TRUE(pa.check_invariants());
}

TEST(Reclaim, ReclaimPointServesADemandWithoutAllocating) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  std::vector<std::string> log;
  FakeCache cache(pa, "cache", &log);
  pa.register_shrinker(&cache);
  auto app = exhaust(pa);
  free_last(pa, app, 300);
  ASSERT_TRUE(cache.fill(300));
  int told = 0;
  pa.reclaim_point();  // no demand: nothing happens
  EXPECT_TRUE(log.empty());
  pa.post_cache_demand(200, count_call, &told);
  pa.reclaim_point();
  EXPECT_EQ(log, (std::vector<std::string>{"cache:200"}));
  EXPECT_GE(pa.free_pages_count(), 200u);
  EXPECT_EQ(told, 1);
  EXPECT_EQ(pa.cache_demand().outcome, CacheDemandOutcome::Served)
      << "met, not dropped: the balloon ends it";
  EXPECT_EQ(pa.cache_demand().given_pages, 200u);
  // Met already: the hook only (the balloon has not taken them yet).
  pa.reclaim_point();
  EXPECT_EQ(log.size(), 1u);
  EXPECT_EQ(told, 2);
  // More than the cache holds: it gives its last 100, then nothing, and the demand is dropped.
  pa.post_cache_demand(1000, count_call, &told);
  pa.reclaim_point();
  pa.reclaim_point();
  EXPECT_TRUE(cache.held.empty());
  EXPECT_EQ(pa.cache_demand().outcome, CacheDemandOutcome::Exhausted);
  EXPECT_EQ(pa.cache_demand().asked_pages, 1000u);
  EXPECT_EQ(pa.cache_demand().given_pages, 100u);
  // Exhausted: a reclaim point has nothing more to do for it.
  const int told_then = told;
  pa.reclaim_point();
  EXPECT_EQ(told, told_then);
  pa.unregister_shrinker(&cache);
  for (PhysAddr p : app) pa.free_pages(p, 0);
  EXPECT_TRUE(pa.check_invariants());
}

// Free memory in plenty but no block of the order asked for: the stall is the app's (counted as
// such), not the balloon demand's, whatever demand is set.
TEST(Reclaim, FragmentationStallIsNotTheBalloons) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  auto app = exhaust(pa);
  std::vector<PhysAddr> kept;
  for (size_t i = 0; i < app.size(); ++i) {
    if (i % 2)
      pa.free_pages(app[i], 0);  // every other page: lots free, nothing contiguous
    else
      kept.push_back(app[i]);
  }
  ASSERT_GT(pa.free_pages_count(), 500u);
  pa.post_cache_demand(10, nullptr, nullptr);
  const auto before = pa.stats();
  EXPECT_EQ(pa.alloc_pages(2, Owner::App).error(), Error::NoMemory);
  EXPECT_EQ(pa.stats().alloc_stalls, before.alloc_stalls + 1);
  EXPECT_EQ(pa.stats().balloon_reclaim_pages, before.balloon_reclaim_pages);
  pa.end_cache_demand();
  for (PhysAddr p : kept) pa.free_pages(p, 0);
  EXPECT_TRUE(pa.check_invariants());
}

}  // namespace
}  // namespace blimp::mm::test
