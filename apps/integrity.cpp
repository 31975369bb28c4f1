// app=integrity: fills memory with data it can recompute and verifies it continuously, so that
// any page the balloon, free page reporting, page-state discard or sharing got wrong shows up.
//
//   integrity [size=256M] [rounds=0] [duration=0] [pause=500ms] [rewrite=8]
//             [inject=stale|zero|foreign]
//
// Memory is malloc'ed in 1 MiB regions of 256 pages. Every fill of a page gets a new 64-bit
// generation (a per-fill counter, starting at 1) mixed into every word with the page's number
// (apps/page_pattern.h), so a page holding an earlier fill's content, another page's, or zeros
// is a mismatch and never passes for valid. Each round verifies every page, then rewrites one
// page in `rewrite` with a new generation, so pages keep changing under the host's feet.
// rounds=0 and duration=0 run until killed. inject= proves the detector works in this guest: after
// round 1 the app itself damages the first page it rewrote, putting back its previous content
// (stale), zeroing it (zero) or copying the next page over it (foreign); round 2 must report it.
// Output per round: "integrity: round R verified N pages, M mismatches (total T), B bad pages
// (total P)" (M and T count words, B and P pages). The first 20 bad pages are each printed as
//   integrity: MISMATCH region R page +O (0xADDR): W of 512 words differ, first word I: expected
//   X found Y; expected generation G, KIND
// where KIND is "found generation F (stale)", "found zeros (zeroed)" or "found content of no
// generation of this page (foreign)". The last line is "integrity: PASS|FAIL: T mismatches"
// followed by the bad-page counts by kind. Exit 0 when no mismatch was ever seen, 1 otherwise.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/mix.h"
#include "apps/page_pattern.h"
#include "kernel/power.h"
#include "kernel/timer.h"

namespace {

using namespace blimp;
namespace pattern = apps::pattern;

constexpr uint64_t kChunk = 1 << 20;
constexpr uint64_t kPagesPerChunk = kChunk / 4096;
constexpr size_t kMaxChunks = 1 << 15;

uint64_t* g_chunks[kMaxChunks];
uint64_t* g_generation;  // per page: the fill it holds
uint64_t g_next_generation = 1;
size_t g_chunk_count;
uint64_t g_total_mismatches;  // words
uint64_t g_total_bad_pages;
uint64_t g_bad_by_kind[4];  // indexed by pattern::Verdict
uint64_t g_reported;

// "integrit" in ASCII: one salt per app, so one app's pages never decode as another's.
constexpr uint64_t kSalt = 0x696e746567726974ull;

uint64_t* page_ptr(uint64_t page) {
  return g_chunks[page / kPagesPerChunk] + (page % kPagesPerChunk) * 512;
}

void fill(uint64_t page) {
  g_generation[page] = g_next_generation++;
  pattern::fill_page(page_ptr(page), pattern::page_key(kSalt, page), g_generation[page]);
}

// Returns the number of wrong words; reports the page.
uint64_t verify(uint64_t page) {
  volatile uint64_t* p = page_ptr(page);
  uint64_t want_gen = g_generation[page];
  uint64_t key = pattern::page_key(kSalt, page);
  pattern::PageCheck c = pattern::check_page(p, key, want_gen, g_next_generation);
  if (c.verdict == pattern::Verdict::kOk) return 0;
  g_total_bad_pages++;
  g_bad_by_kind[static_cast<int>(c.verdict)]++;
  if (g_reported++ < 20) {
    char found[96];
    switch (c.verdict) {
      case pattern::Verdict::kStale:
        snprintf(found, sizeof found, "found generation %" PRIu64 " (stale)", c.found_generation);
        break;
      case pattern::Verdict::kZeroed: snprintf(found, sizeof found, "found zeros (zeroed)"); break;
      default:
        snprintf(found, sizeof found, "found content of no generation of this page (foreign)");
        break;
    }
    printf("integrity: MISMATCH region %" PRIu64 " page +%" PRIu64
           " (%p): %u of %u words differ,"
           " first word %u: expected %016" PRIx64 " found %016" PRIx64
           "; expected generation %" PRIu64 ", %s\n",
           page / kPagesPerChunk, page % kPagesPerChunk, const_cast<uint64_t*>(p), c.bad_words,
           pattern::kWordsPerPage, c.first_bad, pattern::encode(key, c.first_bad, want_gen),
           c.first_found, want_gen, found);
  }
  return c.bad_words;
}

enum class Inject { kNone, kStale, kZero, kForeign };

// Damages `page` as `how` says; `before` holds its content before its last fill.
void inject(Inject how, uint64_t page, uint64_t pages, const uint64_t* before) {
  uint64_t* p = page_ptr(page);
  if (how == Inject::kStale) {
    memcpy(p, before, 4096);
  } else if (how == Inject::kZero) {
    memset(p, 0, 4096);
  } else if (how == Inject::kForeign) {
    memcpy(p, page_ptr((page + 1) % pages), 4096);
  }
  printf("integrity: injected %s content into region %" PRIu64 " page +%" PRIu64 "\n",
         how == Inject::kStale  ? "stale"
         : how == Inject::kZero ? "zero"
                                : "foreign",
         page / kPagesPerChunk, page % kPagesPerChunk);
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
  Inject how = Inject::kNone;
  if (const char* what = app_args::find(argc, argv, "inject")) {
    if (strcmp(what, "stale") == 0)
      how = Inject::kStale;
    else if (strcmp(what, "zero") == 0)
      how = Inject::kZero;
    else if (strcmp(what, "foreign") == 0)
      how = Inject::kForeign;
    else {
      printf("integrity: bad value for inject: %s (stale, zero, foreign)\n", what);
      return 2;
    }
  }
  static uint64_t before[512];
  g_chunk_count = (size + kChunk - 1) / kChunk;
  if (g_chunk_count == 0 || g_chunk_count > kMaxChunks) {
    printf("integrity: size must be between 1M and %zu MiB\n", kMaxChunks);
    return 2;
  }
  uint64_t pages = g_chunk_count * kPagesPerChunk;
  g_generation = static_cast<uint64_t*>(calloc(pages, sizeof(uint64_t)));
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
    uint64_t bad = 0, bad_pages_before = g_total_bad_pages;
    for (uint64_t p = 0; p < pages; p++) bad += verify(p);
    g_total_mismatches += bad;
    uint64_t first = round % rewrite;
    if (round == 1 && how != Inject::kNone && first < pages) memcpy(before, page_ptr(first), 4096);
    for (uint64_t p = first; p < pages; p += rewrite) fill(p);
    if (round == 1 && how != Inject::kNone && first < pages) inject(how, first, pages, before);
    printf("integrity: round %" PRIu64 " verified %" PRIu64 " pages, %" PRIu64
           " mismatches (total %" PRIu64 "), %" PRIu64 " bad pages (total %" PRIu64 ")\n",
           round, pages, bad, g_total_mismatches, g_total_bad_pages - bad_pages_before,
           g_total_bad_pages);
    if (rounds && round >= rounds) break;
    if (duration && timer::now_ns() - start >= duration) break;
    // The power button: the round just verified is the last one.
    if (power::stop_requested() || power::sleep_unless_stopped(pause)) {
      printf("integrity: stop requested after round %" PRIu64 "\n", round);
      break;
    }
  }
  using pattern::Verdict;
  printf("integrity: %s: %" PRIu64 " mismatches, %" PRIu64 " bad pages (stale %" PRIu64
         ", zeroed %" PRIu64 ", foreign %" PRIu64 ")\n",
         g_total_mismatches ? "FAIL" : "PASS", g_total_mismatches, g_total_bad_pages,
         g_bad_by_kind[static_cast<int>(Verdict::kStale)],
         g_bad_by_kind[static_cast<int>(Verdict::kZeroed)],
         g_bad_by_kind[static_cast<int>(Verdict::kForeign)]);
  return g_total_mismatches ? 1 : 0;
}

}  // namespace

BLIMP_APP(integrity, "integrity", "fill memory with checksummed data and verify it continuously",
          integrity_main);
