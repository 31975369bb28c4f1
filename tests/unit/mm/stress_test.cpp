// Several threads hammering the allocator through every entry point at once, under its SpinLock.
// Each test runs twice: with the per-CPU page caches off and on (every thread then plays its own
// CPU, so order-0 pages move through several caches while others drain them).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "arena.h"
#include "kernel/percpu.h"
#include "mm/bench.h"
#include "mm/heap.h"

namespace blimp::mm::test {
namespace {

// Checks the pattern of a random live block and frees it; false if the pattern was lost. Nothing
// to do (true) when nothing is live.
bool free_random_block(PageAllocator& pa, std::vector<std::pair<PhysAddr, unsigned>>& live,
                       std::mt19937_64& rng, uint64_t seed) {
  if (live.empty()) return true;
  size_t i = rng() % live.size();
  bool ok = check(live[i].first, pages_of_order(live[i].second), seed);
  pa.free_pages(live[i].first, live[i].second);
  live[i] = live.back();
  live.pop_back();
  return ok;
}

class Stress : public ::testing::TestWithParam<bool> {
 protected:
  bool pcp() const { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(Caches, Stress, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "PercpuOn" : "PercpuOff";
                         });

TEST_P(Stress, ThreadsHammerAllocFreeTakeGiveBackReport) {
  Fixture f(64 * kMiB);
  PageAllocator& pa = *f.pa;
  pa.set_percpu_caches(pcp());
  pa.set_reporting_reserve(256);
  Heap heap(pa);
  auto shape = free_shape(pa);
  std::atomic<bool> failed{false};
  auto worker = [&](unsigned id) {
    percpu::set_host_cpu_index(id);
    std::mt19937_64 rng(1000 + id);
    std::vector<std::pair<PhysAddr, unsigned>> live;
    std::vector<PageRun> balloon;
    std::vector<std::pair<void*, size_t>> objs;
    const uint64_t seed = id * 0x9e3779b97f4a7c15ull;
    for (int step = 0; step < 20000 && !failed; ++step) {
      switch (rng() % 8) {
        case 0:
        case 1:
        case 2: {
          unsigned o = rng() % 6;
          auto a = pa.alloc_pages(o, Owner::App, kAllocNoReclaim);
          if (!a.is_error()) {
            fill(a.value(), pages_of_order(o), seed);
            live.push_back({a.value(), o});
          }
          break;
        }
        case 3:
          if (!free_random_block(pa, live, rng, seed)) failed = true;
          break;
        case 4: {
          PageRun r[4];
          size_t n = pa.take_pages(1 + rng() % 1500, Owner::Balloon, r, 4);
          for (size_t i = 0; i < n; ++i) fill(r[i].base, r[i].pages, seed);
          balloon.insert(balloon.end(), r, r + n);
          break;
        }
        case 5:
          if (!balloon.empty()) {
            PageRun r = balloon.back();
            balloon.pop_back();
            if (!check(r.base, r.pages, seed)) failed = true;
            pa.give_back(&r, 1, false);
          }
          break;
        case 6: {
          PageRun r[8];
          size_t n = pa.isolate_unreported(5, r, 8);
          for (size_t i = 0; i < n; ++i)
            std::memset(reinterpret_cast<void*>(r[i].base), 0, r[i].pages * kPageSize);
          pa.return_isolated(r, n, true);
          break;
        }
        case 7:
          if (objs.size() < 200 && rng() % 2) {
            size_t size = rng() % 3000;
            void* p = heap.alloc(size);
            if (p) {
              std::memset(p, id, size);
              objs.push_back({p, size});
            }
          } else if (!objs.empty()) {
            auto [p, size] = objs.back();
            objs.pop_back();
            for (size_t k = 0; k < size; ++k)
              if (static_cast<uint8_t*>(p)[k] != static_cast<uint8_t>(id)) failed = true;
            heap.free(p);
          }
          break;
      }
    }
    for (auto& l : live) {
      if (!check(l.first, pages_of_order(l.second), seed)) failed = true;
      pa.free_pages(l.first, l.second);
    }
    pa.give_back(balloon.data(), balloon.size(), false);
    for (auto& o : objs) heap.free(o.first);
  };
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < 4; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();
  EXPECT_FALSE(failed.load()) << "a block's pattern was overwritten";
  heap.trim();
  EXPECT_TRUE(pa.check_invariants(true));
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());  // cached pages are free
  pa.drain_percpu_caches();
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
  EXPECT_EQ(free_shape(pa), shape);
  EXPECT_EQ(pa.bad_give_back_pages(), 0u);
}

uint64_t steady_ns() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

// mmbench threads=N's loop, as every CPU runs it in the guest: four workers allocating and freeing
// 4 KiB pages and 2 MiB blocks at once find every tag they wrote intact and leave the allocator
// as they found it.
TEST(Stress, BenchWorkersFindTheirTagsIntact) {
  Fixture f(64 * kMiB);
  PageAllocator& pa = *f.pa;
  auto shape = free_shape(pa);
  for (unsigned order : {0u, 9u}) {
    const size_t batch = order ? 2 : 64;
    std::vector<AllocWorkerFigures> figures(4);
    std::vector<std::thread> threads;
    const uint64_t end = steady_ns() + 200'000'000;
    for (unsigned i = 0; i < 4; ++i)
      threads.emplace_back([&, i] {
        std::vector<PhysAddr> scratch(batch);
        figures[i] = run_alloc_worker(pa, steady_ns, order, batch, scratch.data(), i, end);
      });
    for (auto& t : threads) t.join();
    for (auto& w : figures) {
      EXPECT_GT(w.ops, 0u) << "order " << order;
      EXPECT_EQ(w.bad_tags, 0u) << "order " << order;
      EXPECT_EQ(w.failed, 0u) << "order " << order;
      EXPECT_GE(w.end_ns, w.start_ns);
    }
  }
  EXPECT_TRUE(pa.check_invariants());
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
  EXPECT_EQ(free_shape(pa), shape);
}

// A worker that finds the allocator empty counts the failure and stops instead of spinning.
TEST(Stress, BenchWorkerStopsOnAnEmptyAllocator) {
  Fixture f(8 * kMiB);
  PageAllocator& pa = *f.pa;
  std::vector<PhysAddr> held;
  for (;;) {
    auto a = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
    if (a.is_error()) break;
    held.push_back(a.value());
  }
  PhysAddr scratch[8];
  auto w = run_alloc_worker(pa, steady_ns, 0, 8, scratch, 1, steady_ns() + 10'000'000'000ull);
  EXPECT_EQ(w.ops, 0u);
  EXPECT_EQ(w.failed, 1u);
  EXPECT_EQ(w.bad_tags, 0u);
  for (PhysAddr a : held) pa.free_pages(a, 0);
}

// Memory pressure from several threads at once: allocations that reclaim run shrinkers and the
// OOM handler concurrently with other threads filling the cache and inflating the balloon.
struct LockedCache : Shrinker {
  explicit LockedCache(PageAllocator& pa) : pa(pa) {}
  size_t count_objects() override { return count.load(); }
  size_t scan_objects(size_t n) override {
    std::lock_guard<std::mutex> g(mu);
    size_t freed = 0;
    while (freed < n && !pages.empty()) {
      pa.free_pages(pages.back(), 0);
      pages.pop_back();
      ++freed;
    }
    count = pages.size();
    return freed;
  }
  void fill(size_t n) {
    std::lock_guard<std::mutex> g(mu);
    for (size_t i = 0; i < n; ++i) {
      auto a = pa.alloc_pages(0, Owner::App, kAllocNoReclaim);
      if (a.is_error()) break;
      pages.push_back(a.value());
    }
    count = pages.size();
  }
  PageAllocator& pa;
  std::mutex mu;
  std::vector<PhysAddr> pages;
  std::atomic<size_t> count{0};
};

struct LockedBalloon {
  PageAllocator& pa;
  std::mutex mu;
  std::vector<PageRun> runs;
  std::atomic<uint64_t> deflated{0};
  static size_t oom(size_t needed, void* ctx) {
    auto* b = static_cast<LockedBalloon*>(ctx);
    std::lock_guard<std::mutex> g(b->mu);
    size_t given = 0;
    while (given < needed && !b->runs.empty()) {
      PageRun r = b->runs.back();
      b->runs.pop_back();
      b->pa.give_back(&r, 1, false);
      given += r.pages;
    }
    b->deflated += given;
    return given;
  }
  void inflate(size_t pages) {
    std::lock_guard<std::mutex> g(mu);
    PageRun r[8];
    size_t n = pa.take_pages(pages, Owner::Balloon, r, 8);
    runs.insert(runs.end(), r, r + n);
  }
};

TEST_P(Stress, ConcurrentReclaimUnderPressure) {
  Fixture f(16 * kMiB);
  PageAllocator& pa = *f.pa;
  pa.set_percpu_caches(pcp());
  auto shape = free_shape(pa);
  LockedCache cache(pa);
  LockedBalloon balloon{pa, {}, {}, {0}};
  pa.register_shrinker(&cache);
  pa.set_oom_handler(&LockedBalloon::oom, &balloon);
  std::atomic<bool> failed{false};
  std::atomic<uint64_t> ok_allocs{0}, failed_allocs{0};
  auto worker = [&](unsigned id) {
    percpu::set_host_cpu_index(id);
    std::mt19937_64 rng(77 + id);
    std::vector<std::pair<PhysAddr, unsigned>> live;
    const uint64_t seed = 0xabcdef00ull + id;
    for (int step = 0; step < 4000 && !failed; ++step) {
      unsigned r = rng() % 10;
      if (r < 5) {
        unsigned o = rng() % 3;
        auto a = pa.alloc_pages(o, Owner::App);
        if (a.is_error()) {
          ++failed_allocs;
        } else {
          ++ok_allocs;
          fill(a.value(), pages_of_order(o), seed);
          live.push_back({a.value(), o});
        }
      } else if (r < 8) {
        if (!free_random_block(pa, live, rng, seed)) failed = true;
      } else if (r < 9) {
        cache.fill(1 + rng() % 64);
      } else {
        balloon.inflate(1 + rng() % 256);
      }
    }
    for (auto& l : live) {
      if (!check(l.first, pages_of_order(l.second), seed)) failed = true;
      pa.free_pages(l.first, l.second);
    }
  };
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < 4; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();
  EXPECT_FALSE(failed.load());
  MemoryStats s = pa.stats();
  EXPECT_GT(s.alloc_stalls, 0u);
  EXPECT_GT(s.direct_reclaim_pages, 0u);
  pa.unregister_shrinker(&cache);
  cache.scan_objects(SIZE_MAX);
  LockedBalloon::oom(SIZE_MAX, &balloon);
  EXPECT_TRUE(pa.check_invariants());
  pa.drain_percpu_caches();
  EXPECT_EQ(free_shape(pa), shape);
  EXPECT_GT(ok_allocs.load(), 0u);
}

// What the page-state array would hold for an owner (mm/page_states: the free kinds and the
// balloon read as unused, volatile as volatile, the rest as stable). Merging a reported half into
// a free block changes its owner without a transition, so the test compares these classes.
int state_class(Owner o) {
  switch (o) {
    case Owner::Free:
    case Owner::Reported:
    case Owner::Isolated:
    case Owner::Balloon: return 0;
    case Owner::Volatile: return 1;
    default: return 2;
  }
}

// The page-state array as the state hook keeps it (one class per page, set from the allocator
// at the start, then by every transition the hook is told of), to compare with the allocator.
struct StateShadow {
  StateShadow(PageAllocator& pa, PhysAddr base, uint64_t npages) : base(base), state(npages) {
    for (uint64_t i = 0; i < npages; ++i) state[i] = state_class(pa.owner_of(base + i * kPageSize));
    pa.set_state_hook(
        [](PhysAddr first, size_t count, Owner o, void* ctx) {
          auto* sh = static_cast<StateShadow*>(ctx);
          for (size_t i = 0; i < count; ++i)
            sh->state[(first - sh->base) / kPageSize + i] = state_class(o);
          ++sh->calls;
          return false;
        },
        this);
  }
  // Detaches the hook; returns the pages whose last transition it saw is not their state now.
  uint64_t detach_and_count_wrong(PageAllocator& pa) {
    pa.set_state_hook(nullptr, nullptr);
    uint64_t wrong = 0;
    for (uint64_t i = 0; i < state.size(); ++i)
      wrong += state[i] != state_class(pa.owner_of(base + i * kPageSize));
    return wrong;
  }
  PhysAddr base;
  std::vector<int> state;
  uint64_t calls = 0;  // written under the allocator's lock, read after the threads joined
};

// Every CPU of an SMP guest at once (issue 17): four threads allocate, free, balloon and report
// while a fifth checks the allocator's invariants over and over, each check a consistent view
// under the lock. The state hook, which runs under the lock on whichever thread made the change,
// keeps a shadow of every page's state: at the end it must agree with the allocator, i.e. no
// transition reached the hook out of order.
TEST_P(Stress, InvariantsAndStateHookHoldWhileThreadsWork) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  pa.set_percpu_caches(pcp());
  pa.set_reporting_reserve(256);
  const PhysAddr base = f.arena.base();
  const uint64_t npages = f.arena.size / kPageSize;
  StateShadow shadow(pa, base, npages);
  auto shape = free_shape(pa);
  std::atomic<bool> failed{false}, done{false};
  std::atomic<uint64_t> checks{0};
  std::thread checker([&] {
    while (!done.load()) {
      if (!pa.check_invariants()) failed = true;
      ++checks;
    }
  });
  auto worker = [&](unsigned id) {
    percpu::set_host_cpu_index(id);
    std::mt19937_64 rng(4242 + id);
    std::vector<std::pair<PhysAddr, uint64_t>> runs;  // alloc_run
    std::vector<PageRun> balloon;
    const uint64_t seed = 0x5151ull * (id + 1);
    for (int step = 0; step < 3000 && !failed; ++step) {
      switch (rng() % 6) {
        case 0:
        case 1: {
          uint64_t pages = 1 + rng() % 40;
          auto a = pa.alloc_run(pages, rng() % 4 ? Owner::App : Owner::Volatile, kAllocNoReclaim);
          if (!a.is_error()) {
            fill(a.value(), pages, seed);
            runs.push_back({a.value(), pages});
          }
          break;
        }
        case 2:
          if (!runs.empty()) {
            size_t i = rng() % runs.size();
            if (!check(runs[i].first, runs[i].second, seed)) failed = true;
            pa.free_run(runs[i].first, runs[i].second);
            runs[i] = runs.back();
            runs.pop_back();
          }
          break;
        case 3: {
          PageRun r[4];
          size_t n = pa.take_pages(1 + rng() % 600, Owner::Balloon, r, 4);
          balloon.insert(balloon.end(), r, r + n);
          break;
        }
        case 4:
          if (!balloon.empty()) {
            PageRun r = balloon.back();
            balloon.pop_back();
            pa.give_back(&r, 1, rng() % 2);
          }
          break;
        case 5: {
          PageRun r[8];
          size_t n = pa.isolate_unreported(4, r, 8);
          pa.return_isolated(r, n, rng() % 2);
          break;
        }
      }
    }
    for (auto& r : runs) {
      if (!check(r.first, r.second, seed)) failed = true;
      pa.free_run(r.first, r.second);
    }
    pa.give_back(balloon.data(), balloon.size(), false);
  };
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < 4; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();
  done = true;
  checker.join();
  EXPECT_FALSE(failed.load()) << "an invariant broke mid-run, or a run's pattern was overwritten";
  EXPECT_GT(checks.load(), 0u);
  EXPECT_TRUE(pa.check_invariants());
  pa.drain_percpu_caches();
  EXPECT_EQ(free_shape(pa), shape);
  EXPECT_GT(shadow.calls, 0u);
  EXPECT_EQ(shadow.detach_and_count_wrong(pa), 0u)
      << "pages whose last transition the hook saw is not their state";
}

// Issue 17's allocator acceptance, on the host: CPUs allocate and free order-0 pages through
// their caches (two threads share CPU 0, as an interrupt handler shares its CPU with the code it
// interrupts), while a balloon-like thread inflates, deflates, reports and drains, and another
// checks the invariants and that the stats add up. The state hook's shadow must end in agreement
// with the allocator: a cached page is STABLE to the host from its refill to its drain, and no
// transition reached the hook out of order.
TEST_P(Stress, CachesDrainedUnderBalloonAndReporting) {
  Fixture f(32 * kMiB);
  PageAllocator& pa = *f.pa;
  pa.set_percpu_caches(pcp());
  pa.set_reporting_reserve(128);
  Heap heap(pa);
  const PhysAddr base = f.arena.base();
  const uint64_t npages = f.arena.size / kPageSize;
  StateShadow shadow(pa, base, npages);
  auto shape = free_shape(pa);
  std::atomic<bool> failed{false}, done{false};
  std::atomic<uint64_t> balloon_rounds{0};
  std::thread checker([&] {
    percpu::set_host_cpu_index(7);
    while (!done.load()) {
      if (!pa.check_invariants()) failed = true;
      MemoryStats s = pa.stats();
      if (s.free_bytes + s.kernel_bytes + s.app_bytes + s.volatile_bytes + s.balloon_bytes !=
          s.total_bytes)
        failed = true;
    }
  });
  std::thread balloon([&] {
    percpu::set_host_cpu_index(5);
    std::mt19937_64 rng(9);
    std::vector<PageRun> held;
    const uint64_t seed = 0xba11;
    while (!done.load()) {
      PageRun r[8];
      size_t n = pa.take_pages(1 + rng() % 1024, Owner::Balloon, r, 8);
      for (size_t i = 0; i < n; ++i) fill(r[i].base, r[i].pages, seed);
      held.insert(held.end(), r, r + n);
      if (held.size() > 16 || rng() % 2) {
        const bool discarded = rng() % 2;
        for (auto& h : held) {
          if (!check(h.base, h.pages, seed)) failed = true;
          if (discarded) std::memset(reinterpret_cast<void*>(h.base), 0, h.pages * kPageSize);
        }
        pa.give_back(held.data(), held.size(), discarded);
        held.clear();
      }
      n = pa.isolate_unreported(2, r, 8);
      for (size_t i = 0; i < n; ++i)
        std::memset(reinterpret_cast<void*>(r[i].base), 0, r[i].pages * kPageSize);
      pa.return_isolated(r, n, true);
      pa.drain_percpu_caches();
      ++balloon_rounds;
    }
    pa.give_back(held.data(), held.size(), false);
  });
  auto worker = [&](unsigned id) {
    percpu::set_host_cpu_index(id == 3 ? 0 : id);
    std::mt19937_64 rng(31337 + id);
    std::vector<std::pair<PhysAddr, unsigned>> live;
    std::vector<std::pair<void*, size_t>> objs;
    const uint64_t seed = 0x77ull * (id + 1);
    for (int step = 0; step < 6000 && !failed; ++step) {
      unsigned r = rng() % 20;
      if (r < 10) {
        unsigned o = r < 9 ? 0 : 1 + rng() % 3;
        Owner owner = rng() % 2 ? Owner::App : Owner::Kernel;
        auto a =
            pa.alloc_pages(o, owner, rng() % 4 ? kAllocNoReclaim : kAllocNoReclaim | kAllocZero);
        if (!a.is_error()) {
          fill(a.value(), pages_of_order(o), seed);
          live.push_back({a.value(), o});
        }
      } else if (r < 18) {
        if (!free_random_block(pa, live, rng, seed)) failed = true;
      } else if (objs.size() < 100 && rng() % 2) {
        size_t size = 1 + rng() % 2000;
        void* p = heap.alloc(size);
        if (p) {
          std::memset(p, static_cast<int>(id + 1), size);
          objs.push_back({p, size});
        }
      } else if (!objs.empty()) {
        auto [p, size] = objs.back();
        objs.pop_back();
        for (size_t k = 0; k < size; ++k)
          if (static_cast<uint8_t*>(p)[k] != static_cast<uint8_t>(id + 1)) failed = true;
        heap.free(p);
      }
    }
    for (auto& l : live) {
      if (!check(l.first, pages_of_order(l.second), seed)) failed = true;
      pa.free_pages(l.first, l.second);
    }
    for (auto& o : objs) heap.free(o.first);
  };
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < 4; ++i) threads.emplace_back(worker, i);
  for (auto& t : threads) t.join();
  done = true;
  balloon.join();
  checker.join();
  EXPECT_FALSE(failed.load()) << "a pattern was overwritten, an invariant broke or stats were off";
  EXPECT_GT(balloon_rounds.load(), 0u);
  heap.trim();
  EXPECT_TRUE(pa.check_invariants(true));
  EXPECT_EQ(pa.free_pages_count(), pa.total_pages());
  pa.drain_percpu_caches();
  EXPECT_EQ(pa.percpu_cached_pages(), 0u);
  EXPECT_EQ(free_shape(pa), shape);
  EXPECT_EQ(shadow.detach_and_count_wrong(pa), 0u)
      << "pages whose last transition the hook saw is not their state";
}

}  // namespace
}  // namespace blimp::mm::test
