// app=zerocheck: holds the allocator to the promise behind calloc: memory handed out as zeroed
// reads as zeros.
//
//   zerocheck [size=256M] [chunk=4M] [rounds=0] [duration=0] [pause=200ms] [invariants=0]
//
// Every round callocs `size` in `chunk` pieces, checks that every word is zero, fills every page
// with a pattern that names the page and the round (apps/page_pattern.h), frees it all and pauses,
// so the host's page-state sweeps discard the freed pages. The next round gets many of them back
// without zeroing: their page-state byte says DISCARDED, which the host only writes after the
// discard, so the allocator skips the memset ("known zero"). Anything that breaks that promise
// (a migration that sent a page's old content and not its discard, a discard the host never did)
// hands out a page of an earlier round's fill, and this app names the round.
//
// Output per round:
//   zerocheck: round R checked N pages, B not zero (total T), K known-zero (total Z)
// where K counts pages the allocator handed out without zeroing in this round. The first 20 bad
// pages are printed as
//   zerocheck: NOT ZERO page 0xADDR: W of 512 words, first word I = X (round R's fill | unknown)
// Two chunks of one round that overlap (the allocator handed a page out twice) are printed as
//   zerocheck: OVERLAP chunk 0xA+N and chunk 0xB+M
// and count as failures; invariants=1 also runs the page allocator's check_invariants() after
// every round ("zerocheck: allocator invariants broken" on failure), to tell a corrupted
// allocator from memory that lost its content.
// The last line is "zerocheck: PASS|FAIL: T pages not zero, Z known-zero pages checked".
// Exit 0 when every page read as zeros, 1 otherwise.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/page_pattern.h"
#include "kernel/power.h"
#include "kernel/timer.h"
#include "mm/mm.h"
#include "mm/page_allocator.h"

namespace {

using namespace blimp;
namespace pattern = apps::pattern;

constexpr size_t kMaxChunks = 1 << 14;
constexpr uint64_t kPage = 4096;
// "zerochek": one salt per app, so this app's fills never decode as another app's.
constexpr uint64_t kSalt = 0x7a65726f6368656bull;

uint8_t* g_chunks[kMaxChunks];
uint64_t g_bad_total;
uint64_t g_printed;

uint64_t zero_skips() { return mm::pages().stats().zero_skips; }

// Chunks handed out in one round must not overlap: sorts g_chunks[0..n) and counts overlaps.
uint64_t count_overlaps(size_t n, uint64_t chunk) {
  for (size_t i = 1; i < n; i++) {
    for (size_t j = i; j > 0 && g_chunks[j - 1] > g_chunks[j]; j--) {
      uint8_t* t = g_chunks[j];
      g_chunks[j] = g_chunks[j - 1];
      g_chunks[j - 1] = t;
    }
  }
  uint64_t bad = 0;
  for (size_t i = 1; i < n; i++) {
    if (g_chunks[i - 1] + chunk > g_chunks[i]) {
      if (g_printed++ < 20)
        printf("zerocheck: OVERLAP chunk %p+%" PRIu64 " and chunk %p+%" PRIu64 "\n",
               static_cast<void*>(g_chunks[i - 1]), chunk, static_cast<void*>(g_chunks[i]), chunk);
      bad++;
    }
  }
  return bad;
}

// The round whose fill `page` holds, or 0 when the content is no fill of this page.
uint64_t fill_round(const uint64_t* w, uint64_t where) {
  const uint64_t key = pattern::page_key(kSalt, where);
  const uint64_t round = pattern::decode(key, 0, w[0]);
  for (unsigned i = 1; i < pattern::kWordsPerPage; i++) {
    if (pattern::decode(key, i, w[i]) != round) return 0;
  }
  return round;
}

bool check_page(const uint64_t* w, uint64_t where) {
  unsigned bad = 0, first = 0;
  for (unsigned i = 0; i < pattern::kWordsPerPage; i++) {
    if (w[i] != 0 && bad++ == 0) first = i;
  }
  if (bad == 0) return true;
  if (g_printed++ < 20) {
    uint64_t r = fill_round(w, where);
    char from[40];
    if (r)
      snprintf(from, sizeof from, "round %" PRIu64 "'s fill", r);
    else
      snprintf(from, sizeof from, "unknown");
    printf("zerocheck: NOT ZERO page %#" PRIx64 ": %u of 512 words, first word %u = %#" PRIx64
           " (%s)\n",
           where, bad, first, w[first], from);
  }
  return false;
}

int zerocheck_main(int argc, char** argv) {
  const char* app = "zerocheck";
  uint64_t size = 256ull << 20, chunk = 4ull << 20, rounds = 0, duration = 0, pause = 200000000ull,
           invariants = 0;
  if (!app_args::get_size(app, argc, argv, "size", size) ||
      !app_args::get_size(app, argc, argv, "chunk", chunk) ||
      !app_args::get_u64(app, argc, argv, "rounds", rounds) ||
      !app_args::get_duration(app, argc, argv, "duration", duration) ||
      !app_args::get_duration(app, argc, argv, "pause", pause) ||
      !app_args::get_u64(app, argc, argv, "invariants", invariants)) {
    return 2;
  }
  chunk = (chunk + kPage - 1) / kPage * kPage;
  if (chunk == 0 || size < chunk || size / chunk > kMaxChunks) {
    printf("zerocheck: size=%" PRIu64 " chunk=%" PRIu64
           ": need chunk > 0, size >= chunk and at "
           "most %zu chunks\n",
           size, chunk, kMaxChunks);
    return 2;
  }
  const size_t chunks = size / chunk;
  const uint64_t pages_per_chunk = chunk / kPage;
  printf("zerocheck: %zu chunks of %" PRIu64 " KiB per round\n", chunks, chunk >> 10);
  uint64_t known_total = 0;
  const uint64_t start = timer::now_ns();
  for (uint64_t round = 1;; round++) {
    const uint64_t skips_before = zero_skips();
    uint64_t bad = 0, checked = 0;
    size_t got = 0;
    for (; got < chunks; got++) {
      g_chunks[got] = static_cast<uint8_t*>(calloc(1, chunk));
      if (!g_chunks[got]) break;
    }
    const uint64_t known = zero_skips() - skips_before;
    known_total += known;
    for (size_t c = 0; c < got; c++) {
      for (uint64_t p = 0; p < pages_per_chunk; p++) {
        auto* w = reinterpret_cast<uint64_t*>(g_chunks[c] + p * kPage);
        const uint64_t where = reinterpret_cast<uintptr_t>(w);
        if (!check_page(w, where)) bad++;
        checked++;
        const uint64_t key = pattern::page_key(kSalt, where);
        for (unsigned i = 0; i < pattern::kWordsPerPage; i++) w[i] = pattern::encode(key, i, round);
      }
    }
    bad += count_overlaps(got, chunk);
    for (size_t c = 0; c < got; c++) free(g_chunks[c]);
    if (invariants && !mm::pages().check_invariants()) {
      printf("zerocheck: allocator invariants broken after round %" PRIu64 "\n", round);
      bad++;
    }
    g_bad_total += bad;
    printf("zerocheck: round %" PRIu64 " checked %" PRIu64 " pages, %" PRIu64
           " not zero (total %" PRIu64 "), %" PRIu64 " known-zero (total %" PRIu64 ")%s\n",
           round, checked, bad, g_bad_total, known, known_total,
           got < chunks ? " (short: out of memory)" : "");
    if (rounds && round >= rounds) break;
    if (duration && timer::now_ns() - start >= duration) break;
    if (power::stop_requested() || power::sleep_unless_stopped(pause)) {
      printf("zerocheck: stop requested after round %" PRIu64 "\n", round);
      break;
    }
  }
  printf("zerocheck: %s: %" PRIu64 " pages not zero, %" PRIu64 " known-zero pages checked\n",
         g_bad_total ? "FAIL" : "PASS", g_bad_total, known_total);
  return g_bad_total ? 1 : 0;
}

}  // namespace

BLIMP_APP(zerocheck, "zerocheck", "check that memory handed out as zeroed reads as zeros",
          zerocheck_main);
