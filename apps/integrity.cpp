// app=integrity: fills memory with data it can recompute and verifies it continuously, so that
// any page the balloon, free page reporting, page-state discard or sharing got wrong shows up.
//
//   integrity [size=256M] [rounds=0] [duration=0] [pause=500ms] [rewrite=8]
//
// Every 4 KiB page holds 512 words from a splitmix64 stream seeded by (page number, generation).
// Each round verifies every page, then rewrites one page in `rewrite` with the next generation,
// so pages keep changing under the host's feet. rounds=0 and duration=0 run until killed.
// Output per round: "integrity: round R verified N pages, M mismatches (total T)"; any mismatch
// is printed with its address, word, expected and found values. Exit 0 when no mismatch was ever
// seen, 1 otherwise.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/mix.h"
#include "kernel/timer.h"

namespace {

using namespace blimp;

constexpr uint64_t kChunk = 1 << 20;
constexpr uint64_t kPagesPerChunk = kChunk / 4096;
constexpr size_t kMaxChunks = 1 << 15;

uint64_t* g_chunks[kMaxChunks];
uint8_t* g_generation;  // per page
size_t g_chunk_count;
uint64_t g_total_mismatches;

using apps::splitmix64;

uint64_t* page_ptr(uint64_t page) {
  return g_chunks[page / kPagesPerChunk] + (page % kPagesPerChunk) * 512;
}

void fill(uint64_t page) {
  uint64_t state = (page << 8) | g_generation[page];
  volatile uint64_t* p = page_ptr(page);
  for (int i = 0; i < 512; i++) p[i] = splitmix64(state);
}

uint64_t verify(uint64_t page) {
  uint64_t state = (page << 8) | g_generation[page];
  volatile uint64_t* p = page_ptr(page);
  uint64_t bad = 0;
  for (int i = 0; i < 512; i++) {
    uint64_t want = splitmix64(state), got = p[i];
    if (got != want) {
      if (g_total_mismatches + bad < 20)
        printf("integrity: MISMATCH page %" PRIu64 " at %p word %d: expected %016" PRIx64
               " found %016" PRIx64 "\n",
               page, const_cast<uint64_t*>(p + i), i, want, got);
      bad++;
    }
  }
  return bad;
}

int integrity_main(int argc, char** argv) {
  uint64_t size = 256ull << 20, rounds = 0, duration = 0, pause = 500000000ull, rewrite = 8;
  if (!app_args::get_size("integrity", argc, argv, "size", size) ||
      !app_args::get_u64("integrity", argc, argv, "rounds", rounds) ||
      !app_args::get_duration("integrity", argc, argv, "duration", duration) ||
      !app_args::get_duration("integrity", argc, argv, "pause", pause) ||
      !app_args::get_u64("integrity", argc, argv, "rewrite", rewrite))
    return 2;
  if (rewrite == 0) rewrite = 1;
  g_chunk_count = (size + kChunk - 1) / kChunk;
  if (g_chunk_count == 0 || g_chunk_count > kMaxChunks) {
    printf("integrity: size must be between 1M and %zu MiB\n", kMaxChunks);
    return 2;
  }
  uint64_t pages = g_chunk_count * kPagesPerChunk;
  g_generation = static_cast<uint8_t*>(calloc(pages, 1));
  if (!g_generation) {
    printf("integrity: out of memory for bookkeeping\n");
    return 1;
  }
  for (size_t c = 0; c < g_chunk_count; c++) {
    g_chunks[c] = static_cast<uint64_t*>(malloc(kChunk));
    if (!g_chunks[c]) {
      printf("integrity: out of memory after %zu of %zu MiB\n", c, g_chunk_count);
      return 1;
    }
  }
  for (uint64_t p = 0; p < pages; p++) fill(p);
  printf("integrity: filled %zu MiB (%" PRIu64 " pages)\n", g_chunk_count, pages);
  uint64_t start = timer::now_ns();
  for (uint64_t round = 1;; round++) {
    uint64_t bad = 0;
    for (uint64_t p = 0; p < pages; p++) bad += verify(p);
    g_total_mismatches += bad;
    for (uint64_t p = round % rewrite; p < pages; p += rewrite) {
      g_generation[p]++;
      fill(p);
    }
    printf("integrity: round %" PRIu64 " verified %" PRIu64 " pages, %" PRIu64
           " mismatches (total %" PRIu64 ")\n",
           round, pages, bad, g_total_mismatches);
    if (rounds && round >= rounds) break;
    if (duration && timer::now_ns() - start >= duration) break;
    timer::sleep_ns(pause);
  }
  printf("integrity: %s: %" PRIu64 " mismatches\n", g_total_mismatches ? "FAIL" : "PASS",
         g_total_mismatches);
  return g_total_mismatches ? 1 : 0;
}

}  // namespace

BLIMP_APP(integrity, "integrity", "fill memory with checksummed data and verify it continuously",
          integrity_main);
