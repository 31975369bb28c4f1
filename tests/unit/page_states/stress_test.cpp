// Host-side stress test of the page-state protocol on shared memory: a guest thread and a host
// thread hammer the same pages of one array with the real CAS code (mm/page_states/protocol.h).
//
// The guest thread keeps its own view of every page (free, stable with a pattern, volatile with
// a pattern) and checks content at every step: a STABLE page must hold exactly what it wrote, a
// pin that reports "intact" must find exactly what was there before the unpin, a pin that reports
// "lost" and a free page that comes back DISCARDED must read as all zeros. The host thread sweeps
// as the device does (claim by CAS, discard by zeroing the page word by word, publish), sometimes
// failing a discard, sometimes dawdling between claim and publish so the guest has to wait.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "mm/page_states/protocol.h"

namespace blimp::mm::page_states {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kWords = kPage / 8;

uint64_t pattern(uint64_t page, uint64_t gen, uint64_t w) {
  uint64_t x = (page << 40) ^ (gen << 12) ^ w ^ 0x9e3779b97f4a7c15ull;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  return x ^ (x >> 29);
}

struct Shared {
  explicit Shared(uint64_t pages) : pages(pages), states(pages, kStable) {
    mem = static_cast<uint64_t*>(std::aligned_alloc(kPage, pages * kPage));
    std::memset(mem, 0xa5, pages * kPage);
  }
  ~Shared() { std::free(mem); }
  volatile uint64_t* page(uint64_t i) { return mem + i * kWords; }
  uint64_t pages;
  std::vector<uint8_t> states;
  uint64_t* mem;
  std::atomic<bool> stop{false};
};

struct GuestResult {
  uint64_t ops = 0, corrupt_words = 0, nonzero_after_discard = 0, pins = 0, pins_lost = 0,
           known_zero_allocs = 0, frees = 0, spins = 0;
};

struct HostResult {
  uint64_t sweeps = 0, claimed = 0, discarded_unused = 0, discarded_volatile = 0, put_back = 0;
};

enum class Role : uint8_t { Free, Stable, Volatile };

// Guest CPU `cpu` of `cpus` owns the pages p with p % cpus == cpu (the allocator gives a page to
// one CPU at a time), so with several CPUs their bytes sit side by side in the array's cache
// lines, CAS'd by each CPU and by the host at once.
void guest_thread(Shared& sh, uint64_t seed, std::chrono::milliseconds duration, GuestResult& r,
                  uint64_t cpu = 0, uint64_t cpus = 1) {
  std::mt19937_64 rng(seed);
  std::vector<Role> role(sh.pages, Role::Stable);
  std::vector<uint64_t> gen(sh.pages, 0);
  uint64_t next_gen = 1;
  auto write = [&](uint64_t p) {
    gen[p] = next_gen++;
    volatile uint64_t* w = sh.page(p);
    for (uint64_t i = 0; i < kWords; ++i) w[i] = pattern(p, gen[p], i);
  };
  auto verify = [&](uint64_t p) {
    volatile uint64_t* w = sh.page(p);
    for (uint64_t i = 0; i < kWords; ++i) r.corrupt_words += w[i] != pattern(p, gen[p], i);
  };
  auto verify_zero = [&](uint64_t p) {
    volatile uint64_t* w = sh.page(p);
    for (uint64_t i = 0; i < kWords; ++i) r.nonzero_after_discard += w[i] != 0;
  };
  // Start: every page stable with a pattern, then half of them freed, a quarter volatile.
  for (uint64_t p = cpu; p < sh.pages; p += cpus) {
    write(p);
    if (p % 4 < 2) {
      make_unused(&sh.states[p]);
      role[p] = Role::Free;
    } else if (p % 4 == 2) {
      unpin(&sh.states[p]);
      role[p] = Role::Volatile;
    }
  }
  const auto end = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < end) {
    // Now and then leave the pages alone for a moment (the host gets whole sweeps in).
    if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
    for (int k = 0; k < 64; ++k) {
      uint64_t p = rng() % (sh.pages / cpus) * cpus + cpu;
      volatile uint8_t* b = &sh.states[p];
      ++r.ops;
      switch (role[p]) {
        case Role::Free: {  // allocate
          uint8_t was = make_stable(b, &r.spins);
          if (is_discarded(was)) {
            ++r.known_zero_allocs;
            verify_zero(p);
          }
          write(p);
          role[p] = Role::Stable;
          break;
        }
        case Role::Stable: {
          verify(p);
          switch (rng() % 4) {
            case 0: write(p); break;
            case 1:
              make_unused(b, &r.spins);
              role[p] = Role::Free;
              ++r.frees;
              break;
            default:
              unpin(b);
              role[p] = Role::Volatile;
              break;
          }
          break;
        }
        case Role::Volatile: {
          ++r.pins;
          if (pin(b, &r.spins)) {
            verify(p);  // intact: exactly what was there at unpin time
          } else {
            ++r.pins_lost;
            verify_zero(p);
            write(p);  // regenerate
          }
          if (rng() % 8 == 0) {
            make_unused(b, &r.spins);  // free a volatile page (pinned now: STABLE -> UNUSED)
            role[p] = Role::Free;
          } else if (rng() % 2) {
            unpin(b);
          } else {
            verify(p);
            role[p] = Role::Stable;
          }
          break;
        }
      }
    }
  }
  // Settle: pin everything that is ours and check once more.
  for (uint64_t p = cpu; p < sh.pages; p += cpus) {
    if (role[p] == Role::Stable) verify(p);
    if (role[p] == Role::Volatile) {
      if (pin(&sh.states[p], &r.spins))
        verify(p);
      else
        verify_zero(p);
    }
  }
}

void host_thread(Shared& sh, uint64_t seed, HostResult& r) {
  std::mt19937_64 rng(seed);
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  while (!sh.stop.load(std::memory_order_relaxed)) {
    runs.clear();
    r.claimed += host_claim(sh.states.data(), sh.pages, 1 + rng() % sh.pages, rng() % 4 != 0,
                            [&](uint64_t f, uint64_t c) {
                              runs.emplace_back(f, c);
                              return true;
                            });
    ++r.sweeps;
    if (rng() % 16 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    for (auto [f, c] : runs) {
      bool ok = rng() % 8 != 0;  // sometimes the discard "fails": content untouched
      if (ok) {
        // Discard: the page's content is gone (zero), written word by word so that a guest
        // touching a claimed page would see a torn page.
        for (uint64_t p = f; p < f + c; ++p) {
          volatile uint64_t* w = sh.page(p);
          for (uint64_t i = 0; i < kWords; ++i) w[i] = 0;
        }
      } else {
        r.put_back += c;
      }
      host_finish(sh.states.data(), f, c, ok, &r.discarded_unused, &r.discarded_volatile);
    }
    if (rng() % 4 == 0) std::this_thread::yield();
  }
}

void run(uint64_t pages, uint64_t seed, std::chrono::milliseconds duration, uint64_t cpus = 1) {
  Shared sh(pages);
  std::vector<GuestResult> per_cpu(cpus);
  HostResult h;
  std::thread host([&] { host_thread(sh, seed * 7 + 1, h); });
  std::vector<std::thread> others;
  for (uint64_t c = 1; c < cpus; ++c)
    others.emplace_back(
        [&, c] { guest_thread(sh, seed + c * 1000, duration, per_cpu[c], c, cpus); });
  guest_thread(sh, seed, duration, per_cpu[0], 0, cpus);
  for (auto& t : others) t.join();
  sh.stop = true;
  host.join();
  GuestResult g;
  for (const GuestResult& r : per_cpu) {
    g.ops += r.ops;
    g.corrupt_words += r.corrupt_words;
    g.nonzero_after_discard += r.nonzero_after_discard;
    g.pins += r.pins;
    g.pins_lost += r.pins_lost;
    g.known_zero_allocs += r.known_zero_allocs;
    g.frees += r.frees;
    g.spins += r.spins;
  }
  // The host never leaves a byte it claimed, and never writes anything but legal values.
  for (uint8_t s : sh.states) {
    EXPECT_TRUE(is_valid(s));
    EXPECT_FALSE(is_discarding(s));
  }
  EXPECT_EQ(g.corrupt_words, 0u) << "lost write or use of discarded content";
  EXPECT_EQ(g.nonzero_after_discard, 0u) << "a discarded page did not read as zero";
  // The race was exercised, not dodged.
  EXPECT_GT(h.discarded_unused, 0u);
  EXPECT_GT(h.discarded_volatile, 0u);
  EXPECT_GT(h.put_back, 0u);
  EXPECT_GT(g.pins_lost, 0u);
  EXPECT_GT(g.known_zero_allocs, 0u);
  EXPECT_GT(g.pins, g.pins_lost);
  printf(
      "pages=%lu guest cpus=%lu ops=%lu pins=%lu lost=%lu known-zero allocs=%lu frees=%lu "
      "spins=%lu; "
      "host sweeps=%lu claimed=%lu discarded unused=%lu volatile=%lu put back=%lu\n",
      pages, cpus, g.ops, g.pins, g.pins_lost, g.known_zero_allocs, g.frees, g.spins, h.sweeps,
      h.claimed, h.discarded_unused, h.discarded_volatile, h.put_back);
}

TEST(PageStateStress, FewPagesHeavyContention) { run(8, 1, std::chrono::milliseconds(1500)); }

TEST(PageStateStress, ManyPages) { run(256, 2, std::chrono::milliseconds(2000)); }

TEST(PageStateStress, OnePage) { run(1, 3, std::chrono::milliseconds(1000)); }

// Several guest CPUs (issue 17): each with its own pages, their state bytes interleaved.
TEST(PageStateStress, TwoGuestCpusFewPages) { run(8, 4, std::chrono::milliseconds(1500), 2); }

TEST(PageStateStress, FourGuestCpusManyPages) { run(256, 5, std::chrono::milliseconds(2000), 4); }

}  // namespace
}  // namespace blimp::mm::page_states
