// app=dataset: a deterministic data set, sealed for page sharing (docs/sharing.md).
//
//   dataset [seed=1] [size=64M] [zero=4M] [private=0] [verify=5s] [duration=0]
//           [write_after=0] [write_page=0]
//
// seed         the data set's content is a function of (seed, page index) only: VMs with the
//              same seed hold identical pages, VMs with different seeds share none (but zeros)
// size         data set size (including the zero part)
// zero         the last `zero` bytes of the data set are zero-filled (written, so the host backs
//              them): they are hinted as ZERO runs
// private      extra memory filled with content unique to this boot (TSC-seeded) and never
//              sealed: the app's private working set, which blind KSM scans in vain
// verify       every interval, regenerate every page's expected content from the seed and compare
// duration     exit after this long (0: run until killed)
// write_after  after this long, unseal page `write_page` of the data set, write new content to
//              it and verify that from then on (shows copy on write on the host)
//
// Memory comes from the page allocator in 4 MiB blocks (long runs: few hint entries and few
// mergeable VMAs on the host), and each block is sealed with mm::sharing::seal().
// Output lines (stable, the tests parse them):
//   dataset: ready seed=S pages=N zero_pages=Z private_pages=P sealed=K build_ms=B seal_ms=M
//   first_pfn=F dataset: verify n=I ok=N bad=B t=T dataset: wrote page I pfn=F dataset: done ...
//   (exit 0; 1 if any page ever failed to verify)
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/mix.h"
#include "kernel/arch/cpu.h"
#include "kernel/memory.h"
#include "kernel/timer.h"
#include "mm/mm.h"
#include "mm/sharing/seal.h"
#include "mm/sharing/sharing.h"

namespace {

using namespace blimp;

constexpr uint64_t kPageWords = kPageSize / 8;
constexpr unsigned kChunkOrder = mm::kMaxOrder;  // 4 MiB
constexpr uint64_t kChunkPages = mm::pages_of_order(kChunkOrder);
constexpr size_t kMaxChunks = 4096;  // 16 GiB

using apps::kGoldenGamma;
using apps::mix64;

// Content of data-set page `index` in version `version` (0: as built; 1: after write_after).
void fill_page(uint64_t* w, uint64_t seed, uint64_t index, uint64_t version) {
  uint64_t s = mix64(seed * kGoldenGamma ^ mix64(index + 1) ^ (version << 61));
  for (uint64_t j = 0; j < kPageWords; j++) w[j] = s = mix64(s + j);
}

bool page_matches(const uint64_t* w, uint64_t seed, uint64_t index, uint64_t version) {
  uint64_t s = mix64(seed * kGoldenGamma ^ mix64(index + 1) ^ (version << 61));
  uint64_t diff = 0;
  for (uint64_t j = 0; j < kPageWords; j++) diff |= w[j] ^ (s = mix64(s + j));
  return diff == 0;
}

bool page_zero(const uint64_t* w) {
  uint64_t acc = 0;
  for (uint64_t j = 0; j < kPageWords; j++) acc |= w[j];
  return acc == 0;
}

struct Chunk {
  PhysAddr base;
  uint64_t pages;
  bool run;  // from alloc_run (not a whole 4 MiB block)
};

struct Region {
  Chunk chunks[kMaxChunks];
  size_t n = 0;
  uint64_t pages = 0;

  bool alloc(uint64_t want) {
    while (pages < want) {
      uint64_t left = want - pages;
      if (n == kMaxChunks) return false;
      if (left >= kChunkPages) {
        auto r = mm::pages().alloc_pages(kChunkOrder, mm::Owner::App);
        if (!r.is_error()) {
          chunks[n++] = Chunk{r.value(), kChunkPages, false};
          pages += kChunkPages;
          continue;
        }
      }
      // Tail, or no whole block left: a run of what remains (at most a block's worth).
      uint64_t take = left < kChunkPages ? left : kChunkPages;
      auto r = mm::pages().alloc_run(take, mm::Owner::App);
      if (r.is_error()) return false;
      chunks[n++] = Chunk{r.value(), take, true};
      pages += take;
    }
    return true;
  }

  // Page `i` of the region.
  uint64_t* page(uint64_t i) const {
    for (size_t c = 0; c < n; c++) {
      if (i < chunks[c].pages) return phys_to_virt<uint64_t>(chunks[c].base + i * kPageSize);
      i -= chunks[c].pages;
    }
    return nullptr;
  }
};

Region g_data;
Region g_private;

int dataset_main(int argc, char** argv) {
  const char* app = "dataset";
  uint64_t seed = 1, size = 64ull << 20, zero = 4ull << 20, priv = 0, verify_ns = 5000000000ull,
           duration_ns = 0, write_after_ns = 0, write_page = 0;
  if (!app_args::get_u64(app, argc, argv, "seed", seed) ||
      !app_args::get_size(app, argc, argv, "size", size) ||
      !app_args::get_size(app, argc, argv, "zero", zero) ||
      !app_args::get_size(app, argc, argv, "private", priv) ||
      !app_args::get_duration(app, argc, argv, "verify", verify_ns) ||
      !app_args::get_duration(app, argc, argv, "duration", duration_ns) ||
      !app_args::get_duration(app, argc, argv, "write_after", write_after_ns) ||
      !app_args::get_u64(app, argc, argv, "write_page", write_page))
    return 2;
  const uint64_t pages = size / kPageSize;
  const uint64_t zero_pages = (zero > size ? size : zero) / kPageSize;
  const uint64_t data_pages = pages - zero_pages;
  const uint64_t private_pages = priv / kPageSize;
  if (pages == 0 || write_page >= pages) {
    printf("dataset: need size >= 4K and write_page < pages\n");
    return 2;
  }

  uint64_t t0 = timer::now_ns();
  if (!g_data.alloc(pages)) {
    printf("dataset: out of memory for %" PRIu64 " MiB of data\n", size >> 20);
    return 1;
  }
  for (uint64_t i = 0; i < data_pages; i++) fill_page(g_data.page(i), seed, i, 0);
  for (uint64_t i = data_pages; i < pages; i++) memset(g_data.page(i), 0, kPageSize);
  if (private_pages) {
    if (!g_private.alloc(private_pages)) {
      printf("dataset: out of memory for %" PRIu64 " MiB of private data\n", priv >> 20);
      return 1;
    }
    uint64_t salt = mix64(arch::rdtsc()) | 1;
    for (uint64_t i = 0; i < private_pages; i++) fill_page(g_private.page(i), salt, i, 0);
  }
  uint64_t t1 = timer::now_ns();
  uint64_t sealed = 0;
  for (size_t c = 0; c < g_data.n; c++) {
    auto r = mm::sharing::seal(phys_to_virt<void>(g_data.chunks[c].base),
                               g_data.chunks[c].pages * kPageSize);
    if (r.is_error()) {
      printf("dataset: seal of chunk %zu failed: %s\n", c, error_name(r.error()));
      return 1;
    }
    sealed += r.value();
  }
  uint64_t t2 = timer::now_ns();
  printf("dataset: ready seed=%" PRIu64 " pages=%" PRIu64 " zero_pages=%" PRIu64
         " private_pages=%" PRIu64 " sealed=%" PRIu64 " build_ms=%" PRIu64 " seal_ms=%" PRIu64
         " first_pfn=%#" PRIx64 "\n",
         seed, pages, zero_pages, private_pages, sealed, (t1 - t0) / 1000000, (t2 - t1) / 1000000,
         g_data.chunks[0].base >> kPageShift);
  mm::sharing::print_stats("dataset: sharing");

  const uint64_t start = timer::now_ns();
  bool written = false;
  uint64_t bad_total = 0, rounds = 0;
  uint64_t next_verify = start + verify_ns;
  for (;;) {
    uint64_t now = timer::now_ns();
    if (write_after_ns && !written && now >= start + write_after_ns) {
      uint64_t* p = g_data.page(write_page);
      auto r = mm::sharing::unseal(p, kPageSize);
      if (r.is_error()) {
        printf("dataset: unseal failed: %s\n", error_name(r.error()));
        return 1;
      }
      fill_page(p, seed, write_page, 1);
      written = true;
      printf("dataset: wrote page %" PRIu64 " pfn=%#" PRIx64 " unsealed=%" PRIu64 "\n", write_page,
             virt_to_phys(p) >> kPageShift, r.value());
      mm::sharing::print_stats("dataset: sharing");
    }
    if (now >= next_verify) {
      uint64_t ok = 0, bad = 0;
      for (uint64_t i = 0; i < pages; i++) {
        const uint64_t* p = g_data.page(i);
        bool good = i < data_pages ? page_matches(p, seed, i, written && i == write_page ? 1 : 0)
                                   : page_zero(p);
        if (written && i == write_page && i >= data_pages) good = page_matches(p, seed, i, 1);
        if (good) {
          ok++;
        } else {
          if (bad < 4)
            printf("dataset: MISMATCH page %" PRIu64 " pfn=%#" PRIx64 "\n", i,
                   virt_to_phys(p) >> kPageShift);
          bad++;
        }
      }
      rounds++;
      bad_total += bad;
      printf("dataset: verify n=%" PRIu64 " ok=%" PRIu64 " bad=%" PRIu64 " t=%.1f\n", rounds, ok,
             bad, double(now - start) / 1e9);
      next_verify = timer::now_ns() + verify_ns;
    }
    if (duration_ns && now >= start + duration_ns) break;
    uint64_t wake = next_verify;
    if (write_after_ns && !written && start + write_after_ns < wake) wake = start + write_after_ns;
    if (duration_ns && start + duration_ns < wake) wake = start + duration_ns;
    timer::wait_until(wake);
  }
  mm::sharing::print_stats("dataset: sharing");
  printf("dataset: done rounds=%" PRIu64 " bad=%" PRIu64 "\n", rounds, bad_total);
  return bad_total ? 1 : 0;
}

}  // namespace

BLIMP_APP(dataset, "dataset", "deterministic data set from a seed, sealed for page sharing",
          dataset_main);
