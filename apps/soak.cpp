// app=soak: every kind of memory the host cooperates on, churned and verified continuously, for
// the adverse-host soak (tests/soak/soak.py, docs/soak.md).
//
//   soak [fixed=64M] [churn=256M] [volatile=16M] [sealed=8M] [duration=0] [report=1s] [seed=1]
//
// Every round:
//   fixed     a quarter of a region is verified (each page against its own generation), and a
//             few pages rewritten with the next generation, as app=integrity does;
//   churn     some live allocations (1-16 MiB each, filled from their own 64-bit id and the page
//             index) are verified whole and freed, and new ones made until `churn` is live
//             again: pages move between the app and the free lists all the time, under the
//             balloon, free page reporting and page-state sweeps;
//   volatile  a volatile region (page states) is pinned: verified if intact, refilled if the host
//             discarded it; then unpinned;
//   sealed    a sealed region (sharing hints) is verified, unsealed, rewritten with a new
//             generation, and sealed again.
// A failed allocation is no error (the host may hold the memory): it is counted and retried.
// Every word depends on (kind, id, page, word) and a generation no other fill used
// (apps/page_pattern.h), so a page that is stale, zero, or some other page's shows as a mismatch,
// classified as such. Output per report:
//   "soak: t=S rounds=R verified_pages=V mismatches=M alloc_failures=F volatile_lost=L seals=N"
// A mismatch prints "soak: MISMATCH kind=... page=... word=... expected=... found=..." (the first
// 20). Exit 0 when nothing was ever wrong (duration=0 runs until the VM is stopped).
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/mix.h"
#include "apps/page_pattern.h"
#include "kernel/timer.h"
#include "mm/page_states/page_states.h"
#include "mm/page_states/volatile_memory.h"
#include "mm/sharing/seal.h"

namespace {

using namespace blimp;
namespace ps = blimp::mm::page_states;
namespace pattern = blimp::apps::pattern;
using apps::mix64;

constexpr uint64_t kPage = 4096;
constexpr size_t kMaxAllocs = 4096;

enum Kind : uint64_t { kFixed = 1, kChurn = 2, kVolatile = 3, kSealed = 4 };
const char* kind_name(uint64_t k) {
  switch (k) {
    case kFixed: return "fixed";
    case kChurn: return "churn";
    case kVolatile: return "volatile";
    default: return "sealed";
  }
}

struct Totals {
  uint64_t rounds, verified_pages, mismatches, alloc_failures, volatile_lost, seals;
};
Totals g;

// Page contents: apps/page_pattern.h. A page's key comes from (kind, id, page), its generation
// from one counter for the whole app, so no two fills anywhere write the same page content, and a
// bad page is told apart as stale (an earlier fill of it), zeroed or foreign.
uint64_t g_next_generation = 1;
uint64_t key_of(uint64_t kind, uint64_t id, uint64_t page) {
  return pattern::page_key(0x50a4c0de00000000ull | kind, (id << 24) ^ page);
}

uint64_t fill_page(void* p, uint64_t kind, uint64_t id, uint64_t page) {
  const uint64_t gen = g_next_generation++;
  pattern::fill_page(static_cast<volatile uint64_t*>(p), key_of(kind, id, page), gen);
  return gen;
}
void fill_page_as(void* p, uint64_t kind, uint64_t id, uint64_t page, uint64_t gen) {
  pattern::fill_page(static_cast<volatile uint64_t*>(p), key_of(kind, id, page), gen);
}

bool verify_page(const void* p, uint64_t kind, uint64_t id, uint64_t page, uint64_t gen) {
  ++g.verified_pages;
  auto c = pattern::check_page(static_cast<const volatile uint64_t*>(p), key_of(kind, id, page),
                               gen, g_next_generation);
  if (c.verdict == pattern::Verdict::kOk) return true;
  if (g.mismatches < 20) {
    printf("soak: MISMATCH kind=%s id=%" PRIu64 " page=%" PRIu64
           " at %p: %u of 512 words "
           "differ, first word %u found %016" PRIx64 "; expected generation %" PRIu64 ", %s",
           kind_name(kind), id, page, p, c.bad_words, c.first_bad, c.first_found, gen,
           pattern::verdict_name(c.verdict));
    if (c.verdict == pattern::Verdict::kStale)
      printf(" (generation %" PRIu64 ")", c.found_generation);
    printf("\n");
  }
  ++g.mismatches;
  return false;
}

struct Alloc {
  void* data;
  uint64_t pages, id, gen;
};

int soak_main(int argc, char** argv) {
  const char* app = "soak";
  uint64_t fixed = 64ull << 20, churn = 256ull << 20, vol = 16ull << 20, sealed = 8ull << 20;
  uint64_t duration = 0, report = 1000000000ull, seed = 1;
  if (!app_args::get_size(app, argc, argv, "fixed", fixed) ||
      !app_args::get_size(app, argc, argv, "churn", churn) ||
      !app_args::get_size(app, argc, argv, "volatile", vol) ||
      !app_args::get_size(app, argc, argv, "sealed", sealed) ||
      !app_args::get_duration(app, argc, argv, "duration", duration) ||
      !app_args::get_duration(app, argc, argv, "report", report) ||
      !app_args::get_u64(app, argc, argv, "seed", seed))
    return 2;
  const uint64_t fixed_pages = fixed / kPage, vol_pages = vol / kPage,
                 sealed_pages = sealed / kPage;

  auto* fixed_mem = static_cast<uint8_t*>(aligned_alloc(kPage, fixed_pages * kPage + kPage));
  auto* fixed_gen = static_cast<uint64_t*>(calloc(fixed_pages + 1, sizeof(uint64_t)));
  auto* sealed_mem = static_cast<uint8_t*>(aligned_alloc(kPage, sealed_pages * kPage + kPage));
  auto* allocs = static_cast<Alloc*>(calloc(kMaxAllocs, sizeof(Alloc)));
  if (!fixed_mem || !fixed_gen || !sealed_mem || !allocs) {
    printf("soak: out of memory for the fixed regions\n");
    return 1;
  }
  for (uint64_t p = 0; p < fixed_pages; ++p)
    fixed_gen[p] = fill_page(fixed_mem + p * kPage, kFixed, 0, p);
  uint64_t seal_gen = g_next_generation++;
  for (uint64_t p = 0; p < sealed_pages; ++p)
    fill_page_as(sealed_mem + p * kPage, kSealed, 0, p, seal_gen);
  const bool can_seal =
      sealed_pages && !mm::sharing::seal(sealed_mem, sealed_pages * kPage).is_error();
  ps::VolatileRegion volatile_region{};
  uint64_t vol_gen = 0;
  if (vol_pages) {
    auto r = ps::allocate_volatile(vol_pages);
    if (!r.is_error()) {
      volatile_region = r.value();
      vol_gen = g_next_generation++;
      for (uint64_t p = 0; p < vol_pages; ++p)
        fill_page_as(static_cast<uint8_t*>(volatile_region.data) + p * kPage, kVolatile, 0, p,
                     vol_gen);
      ps::unpin(volatile_region);
    }
  }
  printf("soak: ready, fixed %" PRIu64 " MiB, churn %" PRIu64 " MiB, volatile %" PRIu64
         " MiB (page_states=%s), sealed %" PRIu64 " MiB (%s)\n",
         fixed >> 20, churn >> 20, vol >> 20, ps::active() ? "on" : "off", sealed >> 20,
         can_seal ? "sealed" : "not sealed");

  uint64_t rng = seed * apps::kGoldenGamma + 7, next_id = 1, live = 0;
  size_t nallocs = 0;
  uint64_t fixed_cursor = 0;
  const uint64_t t0 = timer::now_ns();
  uint64_t next_report = t0 + report;
  for (;;) {
    const uint64_t now = timer::now_ns();
    if (duration && now - t0 >= duration) break;
    if (now >= next_report) {
      printf("soak: t=%" PRIu64 " rounds=%" PRIu64 " verified_pages=%" PRIu64 " mismatches=%" PRIu64
             " alloc_failures=%" PRIu64 " volatile_lost=%" PRIu64 " seals=%" PRIu64 " live=%" PRIu64
             "M\n",
             uint64_t((now - t0) / 1000000000ull), g.rounds, g.verified_pages, g.mismatches,
             g.alloc_failures, g.volatile_lost, g.seals, live >> 20);
      next_report += report;
    }
    // Fixed: a quarter verified, one page in 64 of that quarter rewritten.
    const uint64_t quarter = fixed_pages / 4 + 1;
    for (uint64_t i = 0; i < quarter && fixed_pages; ++i) {
      const uint64_t p = fixed_cursor++ % fixed_pages;
      verify_page(fixed_mem + p * kPage, kFixed, 0, p, fixed_gen[p]);
      if (((rng = mix64(rng)) & 63) == 0)
        fixed_gen[p] = fill_page(fixed_mem + p * kPage, kFixed, 0, p);
    }
    // Churn: free about a quarter of the live allocations (verified whole), then allocate back.
    for (size_t i = 0; i < nallocs;) {
      if (((rng = mix64(rng)) & 3) != 0) {
        ++i;
        continue;
      }
      Alloc a = allocs[i];
      for (uint64_t p = 0; p < a.pages; ++p)
        verify_page(static_cast<uint8_t*>(a.data) + p * kPage, kChurn, a.id, p, a.gen);
      free(a.data);
      live -= a.pages * kPage;
      allocs[i] = allocs[--nallocs];
    }
    while (live < churn && nallocs < kMaxAllocs) {
      const uint64_t pages = 256 + ((rng = mix64(rng)) % (16 * 256 - 256));
      void* d = aligned_alloc(kPage, pages * kPage);
      if (!d) {
        ++g.alloc_failures;
        break;
      }
      const uint64_t id = next_id++, gen = g_next_generation++;
      for (uint64_t p = 0; p < pages; ++p)
        fill_page_as(static_cast<uint8_t*>(d) + p * kPage, kChurn, id, p, gen);
      allocs[nallocs++] = {d, pages, id, gen};
      live += pages * kPage;
    }
    // Volatile: pin, verify or refill, unpin.
    if (volatile_region.valid()) {
      uint64_t lost = 0;
      auto* base = static_cast<uint8_t*>(volatile_region.data);
      if (ps::pin(volatile_region, &lost) == ps::PinResult::Lost) {
        g.volatile_lost += lost;
        vol_gen = g_next_generation++;
        for (uint64_t p = 0; p < vol_pages; ++p)
          fill_page_as(base + p * kPage, kVolatile, 0, p, vol_gen);
      } else {
        for (uint64_t p = 0; p < vol_pages; ++p)
          verify_page(base + p * kPage, kVolatile, 0, p, vol_gen);
      }
      ps::unpin(volatile_region);
    }
    // Sealed: verify, unseal, rewrite, seal (every fourth round: sealing hashes every page).
    if (can_seal && (g.rounds & 3) == 0) {
      for (uint64_t p = 0; p < sealed_pages; ++p)
        verify_page(sealed_mem + p * kPage, kSealed, 0, p, seal_gen);
      if (!mm::sharing::unseal(sealed_mem, sealed_pages * kPage).is_error()) {
        seal_gen = g_next_generation++;
        for (uint64_t p = 0; p < sealed_pages; ++p)
          fill_page_as(sealed_mem + p * kPage, kSealed, 0, p, seal_gen);
        if (!mm::sharing::seal(sealed_mem, sealed_pages * kPage).is_error()) ++g.seals;
      }
    }
    ++g.rounds;
  }
  printf("soak: done rounds=%" PRIu64 " verified_pages=%" PRIu64 " mismatches=%" PRIu64 "\n",
         g.rounds, g.verified_pages, g.mismatches);
  return g.mismatches ? 1 : 0;
}

}  // namespace

BLIMP_APP(soak, "soak",
          "churn and verify app, volatile and sealed memory under the balloon, for the soak",
          soak_main);
