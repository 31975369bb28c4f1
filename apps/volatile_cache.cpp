// app=volatile-cache: a cache of recomputable data kept in volatile memory (mm/page_states/
// volatile_memory.h). Every entry is pinned before use and unpinned after; while unpinned the
// host may discard its pages (page-state sweeps), and the next pin says the content is lost, so
// the entry is recomputed. Every hit is verified byte for byte against the recomputed content.
//
//   volatile-cache [entries=256] [pages=4] [hot=entries] [duration=10s] [report=1s] [work=0]
//                  [seed=1]
//
// entries   number of cached values, each `pages` 4 KiB pages of volatile memory
// hot       lookups go to the first `hot` entries only; the rest are filled once and left cold
//           (so a host that discards the coldest pages first takes them before any hot one)
// work      extra mixing rounds per word when (re)computing: the cost of a discard
// Output per report and at the end:
//   "volatile-cache: t=S lookups=N hits=H discards=D recomputes=R lost_pages=P corrupt_bytes=C"
//   "volatile-cache: done lookups=N hits=H discards=D recomputes=R lost_pages=P corrupt_bytes=C
//    page_states=on|off"
//   "volatile-cache: cold entries=E lost=L" (with hot < entries: cold entries whose pages the
//    host discarded, found by pinning each one at the end)
// hits: pins that found the content intact (verified); discards: pins that found it lost;
// recomputes: initial fills plus regenerations. Exit 0 when no byte was ever wrong, 1 otherwise.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/mix.h"
#include "kernel/timer.h"
#include "mm/page_states/page_states.h"
#include "mm/page_states/volatile_memory.h"

namespace {

using namespace blimp;
namespace ps = blimp::mm::page_states;

using apps::kGoldenGamma;
using apps::mix64;

struct Stats {
  uint64_t lookups, hits, discards, recomputes, lost_pages, corrupt_bytes;
};

uint64_t g_work = 0;

uint64_t value_word(uint64_t key, uint64_t w) {
  uint64_t x = mix64((key << 24) ^ w ^ 0x5bd1e995ull);
  for (uint64_t i = 0; i < g_work; ++i) x = mix64(x + i);
  return x;
}

void compute(const ps::VolatileRegion& r, uint64_t key) {
  auto* words = static_cast<uint64_t*>(r.data);
  for (uint64_t w = 0; w < r.pages * 512; ++w) words[w] = value_word(key, w);
}

uint64_t corrupt_bytes(const ps::VolatileRegion& r, uint64_t key) {
  auto* words = static_cast<const volatile uint64_t*>(r.data);
  uint64_t bad = 0;
  for (uint64_t w = 0; w < r.pages * 512; ++w) {
    uint64_t diff = words[w] ^ value_word(key, w);
    for (; diff; diff >>= 8) bad += (diff & 0xff) != 0;
  }
  return bad;
}

// Checks a pinned entry against its recomputed content; reports the first corruption seen.
void verify(const ps::VolatileRegion& r, uint64_t key, Stats& s) {
  uint64_t bad = corrupt_bytes(r, key);
  if (bad && s.corrupt_bytes == 0)
    printf("volatile-cache: CORRUPTION: key %" PRIu64 " at %p: %" PRIu64 " bytes\n", key, r.data,
           bad);
  s.corrupt_bytes += bad;
}

void print(const char* prefix, const Stats& s) {
  printf("volatile-cache: %s lookups=%" PRIu64 " hits=%" PRIu64 " discards=%" PRIu64
         " recomputes=%" PRIu64 " lost_pages=%" PRIu64 " corrupt_bytes=%" PRIu64 "\n",
         prefix, s.lookups, s.hits, s.discards, s.recomputes, s.lost_pages, s.corrupt_bytes);
}

int volatile_cache_main(int argc, char** argv) {
  const char* app = "volatile-cache";
  uint64_t entries = 256, pages = 4, duration = 10'000'000'000ull, report = 1'000'000'000ull,
           seed = 1, hot = 0;
  if (!app_args::get_u64(app, argc, argv, "entries", entries) ||
      !app_args::get_u64(app, argc, argv, "pages", pages) ||
      !app_args::get_duration(app, argc, argv, "duration", duration) ||
      !app_args::get_duration(app, argc, argv, "report", report) ||
      !app_args::get_u64(app, argc, argv, "work", g_work) ||
      !app_args::get_u64(app, argc, argv, "seed", seed) ||
      !app_args::get_u64(app, argc, argv, "hot", hot))
    return 2;
  if (entries == 0 || pages == 0) {
    printf("volatile-cache: entries and pages must be > 0\n");
    return 2;
  }
  if (hot == 0 || hot > entries) hot = entries;
  // kernel_main ran ps::init() with the balloon's channel: active() is null without a device
  // offering page states.
  const bool on = ps::active() != nullptr;

  auto* table = static_cast<ps::VolatileRegion*>(calloc(entries, sizeof(ps::VolatileRegion)));
  if (!table) {
    printf("volatile-cache: out of memory for the table\n");
    return 1;
  }
  Stats s{};
  for (uint64_t k = 0; k < entries; ++k) {
    auto r = ps::allocate_volatile(pages);
    if (r.is_error()) {
      printf("volatile-cache: out of memory after %" PRIu64 " entries\n", k);
      return 1;
    }
    table[k] = r.value();
    compute(table[k], k);  // allocate_volatile returns it pinned
    ++s.recomputes;
    ps::unpin(table[k]);
  }
  printf("volatile-cache: ready, %" PRIu64 " entries of %" PRIu64 " KiB, page_states=%s\n", entries,
         pages * 4, on ? "on" : "off");

  uint64_t rng = seed * kGoldenGamma + 1;
  const uint64_t t0 = timer::now_ns();
  uint64_t next_report = t0 + report;
  for (;;) {
    const uint64_t now = timer::now_ns();
    if (now - t0 >= duration) break;
    if (now >= next_report) {
      char prefix[32];
      snprintf(prefix, sizeof prefix, "t=%" PRIu64,
               static_cast<uint64_t>((now - t0) / 1000000000u));
      print(prefix, s);
      next_report += report;
    }
    for (int i = 0; i < 16; ++i) {
      rng = mix64(rng);
      const uint64_t key = rng % hot;
      ps::VolatileRegion& r = table[key];
      ++s.lookups;
      uint64_t lost = 0;
      if (ps::pin(r, &lost) == ps::PinResult::Lost) {
        ++s.discards;
        s.lost_pages += lost;
        compute(r, key);
        ++s.recomputes;
      } else {
        ++s.hits;
      }
      // Verified on every use: an intact hit, and a freshly recomputed entry alike.
      verify(r, key, s);
      ps::unpin(r);
    }
    // Leave the CPU now and then: a cache serves requests, it does not spin.
    timer::sleep_ns(200'000);
  }
  if (hot < entries) {
    // The cold entries were filled once and never touched since: how many did the host take?
    uint64_t cold_lost = 0;
    for (uint64_t k = hot; k < entries; ++k) {
      if (ps::pin(table[k]) == ps::PinResult::Lost) {
        ++cold_lost;
      } else {
        verify(table[k], k, s);
      }
      ps::unpin(table[k]);
    }
    printf("volatile-cache: cold entries=%" PRIu64 " lost=%" PRIu64 "\n", entries - hot, cold_lost);
  }
  for (uint64_t k = 0; k < entries; ++k) ps::free_volatile(table[k]);
  free(table);
  printf("volatile-cache: done lookups=%" PRIu64 " hits=%" PRIu64 " discards=%" PRIu64
         " recomputes=%" PRIu64 " lost_pages=%" PRIu64 " corrupt_bytes=%" PRIu64
         " page_states=%s\n",
         s.lookups, s.hits, s.discards, s.recomputes, s.lost_pages, s.corrupt_bytes,
         on ? "on" : "off");
  ps::Stats st = ps::stats();
  printf("volatile-cache: page-states pins=%" PRIu64 " pins_lost=%" PRIu64
         " known_zero_pages=%" PRIu64 " discard_waits=%" PRIu64 "\n",
         st.pins, st.pins_lost, st.known_zero_pages, st.discard_waits);
  return s.corrupt_bytes ? 1 : 0;
}

}  // namespace

BLIMP_APP(volatile_cache, "volatile-cache",
          "recomputable cache in volatile memory: hits, discards, recomputations, verified",
          volatile_cache_main);
