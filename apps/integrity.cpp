// app=integrity: fills memory with data it can recompute and verifies it continuously, so that
// any page the balloon, free page reporting, page-state discard or sharing got wrong shows up.
//
//   integrity [size=256M] [rounds=0] [duration=0] [pause=500ms] [rewrite=8]
//             [inject=stale|zero|foreign] [threads=1] [churn=0] [invariants=0]
//
// Memory is malloc'ed in 1 MiB regions of 256 pages. Every fill of a page gets a new 64-bit
// generation (a per-fill counter, starting at 1) mixed into every word with the page's number
// (apps/page_pattern.h), so a page holding an earlier fill's content, another page's, or zeros
// is a mismatch and never passes for valid. Each round verifies every page, then rewrites one
// page in `rewrite` with a new generation, so pages keep changing under the host's feet.
// rounds=0 and duration=0 run until killed. inject= proves the detector works in this guest: after
// round 1 the app itself damages the first page it rewrote, putting back its previous content
// (stale), zeroing it (zero) or copying the next page over it (foreign); round 2 must report it.
//
// threads=N (issue 17) splits `size` between N workers, one per CPU: the app's own on the BSP and
// a thread on each of the first N-1 other online CPUs (kernel/threads.h); more than are online is
// an error. Each worker allocates, fills and verifies its own memory on its own CPU, so every CPU
// allocates and verifies at once; page numbers are global, so one worker's page never passes for
// another's. A round ends when every worker has done its part; the round line sums them.
// churn=K replaces K regions per worker and round (a fresh malloc filled anew, then the old one
// freed), so that every CPU also allocates and frees while the host works; an allocation that
// fails keeps the old region and is counted. invariants=1 runs the page allocator's
// check_invariants() once every worker is done: "integrity: allocator invariants hold" (or
// "... VIOLATED", exit 1), before the last line.
//
// Output per round: "integrity: round R verified N pages, M mismatches (total T), B bad pages
// (total P)" (M and T count words, B and P pages). The first 20 bad pages are each printed as
//   integrity: MISMATCH region R page +O (0xADDR): W of 512 words differ, first word I: expected
//   X found Y; expected generation G, KIND
// where KIND is "found generation F (stale)", "found zeros (zeroed)" or "found content of no
// generation of this page (foreign)". With churn=, "integrity: churned C regions (F allocations
// failed)" follows the last round. The last line is "integrity: PASS|FAIL: T mismatches"
// followed by the bad-page counts by kind. Exit 0 when no mismatch was ever seen (and the
// invariants held, if checked), 1 otherwise.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/mix.h"
#include "apps/page_pattern.h"
#include "apps/workers.h"
#include "kernel/console.h"
#include "kernel/percpu.h"
#include "kernel/power.h"
#include "kernel/threads.h"
#include "kernel/timer.h"
#include "lib/atomic.h"
#include "lib/format.h"
#include "mm/mm.h"
#include "mm/page_allocator.h"

namespace {

using namespace blimp;
namespace pattern = apps::pattern;

constexpr uint64_t kChunk = 1 << 20;
constexpr uint64_t kPagesPerChunk = kChunk / 4096;
constexpr size_t kMaxChunks = 1 << 15;

// "integrit" in ASCII: one salt per app, so one app's pages never decode as another's.
constexpr uint64_t kSalt = 0x696e746567726974ull;

enum class Inject { kNone, kStale, kZero, kForeign };

// One worker's memory and counts. Only its own CPU touches it while it runs (a thread on an AP
// uses kprintf, never newlib's stdio: kernel/threads.h); the BSP reads it after the join.
struct Worker {
  size_t cpu = 0;
  size_t first_chunk = 0;  // its regions are g_chunks[first_chunk, +chunk_count)
  size_t chunk_count = 0;
  uint64_t first_page = 0;  // global number of its first page (= first_chunk * kPagesPerChunk)
  uint64_t pages = 0;
  uint64_t* generation = nullptr;  // per page: the fill it holds
  uint64_t next_generation = 1;
  uint64_t churn = 0;
  uint64_t rewrite = 8;
  Inject inject = Inject::kNone;  // worker 0 only
  uint64_t round = 0;
  // Set by setup: regions allocated before it ran out (== chunk_count when it did not).
  size_t allocated = 0;
  // This round's counts.
  uint64_t bad_words = 0, bad_pages = 0;
  uint64_t churned = 0, churn_failures = 0;
  // Counts over the whole run.
  uint64_t bad_by_kind[4] = {};
};

uint64_t* g_chunks[kMaxChunks];
Atomic<uint64_t> g_reported{0};  // MISMATCH lines printed, over all workers

uint64_t* page_ptr(const Worker& w, uint64_t page) {
  return g_chunks[w.first_chunk + page / kPagesPerChunk] + (page % kPagesPerChunk) * 512;
}

void fill(Worker& w, uint64_t page) {
  w.generation[page] = w.next_generation++;
  pattern::fill_page(page_ptr(w, page), pattern::page_key(kSalt, w.first_page + page),
                     w.generation[page]);
}

// Returns the number of wrong words; reports the page.
uint64_t verify(Worker& w, uint64_t page) {
  volatile uint64_t* p = page_ptr(w, page);
  const uint64_t global = w.first_page + page;
  uint64_t want_gen = w.generation[page];
  uint64_t key = pattern::page_key(kSalt, global);
  pattern::PageCheck c = pattern::check_page(p, key, want_gen, w.next_generation);
  if (c.verdict == pattern::Verdict::kOk) return 0;
  w.bad_pages++;
  w.bad_by_kind[static_cast<int>(c.verdict)]++;
  if (g_reported.fetch_add(1) < 20) {
    char found[96];
    switch (c.verdict) {
      case pattern::Verdict::kStale:
        format(found, sizeof found, "found generation %lu (stale)", c.found_generation);
        break;
      case pattern::Verdict::kZeroed: format(found, sizeof found, "found zeros (zeroed)"); break;
      default:
        format(found, sizeof found, "found content of no generation of this page (foreign)");
        break;
    }
    // kprintf, not printf: any CPU may get here.
    kprintf(
        "integrity: MISMATCH region %lu page +%lu (%p): %u of %u words differ,"
        " first word %u: expected %016lx found %016lx; expected generation %lu, %s\n",
        global / kPagesPerChunk, global % kPagesPerChunk, const_cast<uint64_t*>(p), c.bad_words,
        pattern::kWordsPerPage, c.first_bad, pattern::encode(key, c.first_bad, want_gen),
        c.first_found, want_gen, found);
  }
  return c.bad_words;
}

// Damages `page` as `how` says; `before` holds its content before its last fill.
void inject(const Worker& w, Inject how, uint64_t page, const uint64_t* before) {
  uint64_t* p = page_ptr(w, page);
  if (how == Inject::kStale) {
    memcpy(p, before, 4096);
  } else if (how == Inject::kZero) {
    memset(p, 0, 4096);
  } else if (how == Inject::kForeign) {
    memcpy(p, page_ptr(w, (page + 1) % w.pages), 4096);
  }
  const uint64_t global = w.first_page + page;
  kprintf("integrity: injected %s content into region %lu page +%lu\n",
          how == Inject::kStale  ? "stale"
          : how == Inject::kZero ? "zero"
                                 : "foreign",
          global / kPagesPerChunk, global % kPagesPerChunk);
}

// On the worker's CPU: its bookkeeping and regions, allocated there and filled.
void setup(void* arg) {
  Worker& w = *static_cast<Worker*>(arg);
  w.generation = static_cast<uint64_t*>(calloc(w.pages, sizeof(uint64_t)));
  if (!w.generation) return;
  for (; w.allocated < w.chunk_count; w.allocated++) {
    g_chunks[w.first_chunk + w.allocated] = static_cast<uint64_t*>(malloc(kChunk));
    if (!g_chunks[w.first_chunk + w.allocated]) return;
  }
  for (uint64_t p = 0; p < w.pages; p++) fill(w, p);
}

// On the worker's CPU: verify everything, rewrite one page in `rewrite`, churn.
void run_round(void* arg) {
  Worker& w = *static_cast<Worker*>(arg);
  static uint64_t before[512];  // worker 0's, for inject=
  const uint64_t round = w.round;
  w.bad_words = w.bad_pages = w.churned = w.churn_failures = 0;
  for (uint64_t p = 0; p < w.pages; p++) w.bad_words += verify(w, p);
  const uint64_t first = round % w.rewrite;
  const bool injecting = round == 1 && w.inject != Inject::kNone && first < w.pages;
  if (injecting) memcpy(before, page_ptr(w, first), 4096);
  for (uint64_t p = first; p < w.pages; p += w.rewrite) fill(w, p);
  if (injecting) inject(w, w.inject, first, before);
  for (uint64_t k = 0; k < w.churn; k++) {
    const size_t c = size_t((round * w.churn + k) % w.chunk_count);
    auto* fresh = static_cast<uint64_t*>(malloc(kChunk));
    if (!fresh) {
      w.churn_failures++;  // keeps the old region (an AP's allocation cannot reclaim)
      continue;
    }
    uint64_t* old = g_chunks[w.first_chunk + c];
    g_chunks[w.first_chunk + c] = fresh;
    for (uint64_t p = c * kPagesPerChunk; p < (c + 1) * kPagesPerChunk; p++) fill(w, p);
    free(old);
    w.churned++;
  }
}

Worker g_workers[percpu::kMaxCpus];
apps::WorkerCpus g_cpus;

bool run_all(threads::Fn fn) { return apps::run_on_workers("integrity", g_cpus, fn, g_workers); }

}  // namespace

namespace {

int integrity_main(int argc, char** argv) {
  uint64_t size = 256ull << 20, rounds = 0, duration = 0, pause = 500000000ull, rewrite = 8;
  uint64_t nthreads = 1, churn = 0, invariants = 0;
  if (!app_args::get_size("integrity", argc, argv, "size", size) ||
      !app_args::get_u64("integrity", argc, argv, "rounds", rounds) ||
      !app_args::get_duration("integrity", argc, argv, "duration", duration) ||
      !app_args::get_duration("integrity", argc, argv, "pause", pause) ||
      !app_args::get_u64("integrity", argc, argv, "rewrite", rewrite) ||
      !app_args::get_u64("integrity", argc, argv, "threads", nthreads) ||
      !app_args::get_u64("integrity", argc, argv, "churn", churn) ||
      !app_args::get_u64("integrity", argc, argv, "invariants", invariants))
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
  if (!apps::choose_worker_cpus("integrity", nthreads, g_cpus)) return 2;
  const size_t n = g_cpus.count;
  const size_t chunk_count = (size + kChunk - 1) / kChunk;
  if (chunk_count == 0 || chunk_count > kMaxChunks) {
    printf("integrity: size must be between 1M and %zu MiB\n", kMaxChunks);
    return 2;
  }
  if (chunk_count < n) {
    printf("integrity: size=%zuM gives fewer 1 MiB regions than threads=%zu\n", chunk_count, n);
    return 2;
  }
  size_t first_chunk = 0;
  for (size_t i = 0; i < n; i++) {
    Worker& w = g_workers[i];
    w.cpu = g_cpus.cpu[i];
    w.first_chunk = first_chunk;
    w.chunk_count = chunk_count / n + (i < chunk_count % n ? 1 : 0);
    w.first_page = first_chunk * kPagesPerChunk;
    w.pages = w.chunk_count * kPagesPerChunk;
    w.rewrite = rewrite;
    w.churn = churn;
    w.inject = i == 0 ? how : Inject::kNone;
    first_chunk += w.chunk_count;
  }
  if (!run_all(setup)) return 1;
  size_t allocated = 0;
  bool out_of_memory = false;
  for (size_t i = 0; i < n; i++) {
    if (!g_workers[i].generation) {
      printf("integrity: out of memory for bookkeeping (cpu %zu)\n", g_workers[i].cpu);
      return 1;
    }
    allocated += g_workers[i].allocated;
    out_of_memory |= g_workers[i].allocated < g_workers[i].chunk_count;
  }
  if (out_of_memory) {
    printf("integrity: out of memory after %zu of %zu MiB\n", allocated, chunk_count);
    return 1;
  }
  const uint64_t pages = chunk_count * kPagesPerChunk;
  printf("integrity: filled %zu MiB (%" PRIu64 " pages)\n", chunk_count, pages);
  if (n > 1) apps::print_worker_cpus("integrity", g_cpus);
  uint64_t total_mismatches = 0, total_bad_pages = 0, churned = 0, churn_failures = 0;
  uint64_t start = timer::now_ns();
  for (uint64_t round = 1;; round++) {
    for (size_t i = 0; i < n; i++) g_workers[i].round = round;
    if (!run_all(run_round)) return 1;
    uint64_t bad = 0, bad_pages = 0;
    for (size_t i = 0; i < n; i++) {
      bad += g_workers[i].bad_words;
      bad_pages += g_workers[i].bad_pages;
      churned += g_workers[i].churned;
      churn_failures += g_workers[i].churn_failures;
    }
    total_mismatches += bad;
    total_bad_pages += bad_pages;
    printf("integrity: round %" PRIu64 " verified %" PRIu64 " pages, %" PRIu64
           " mismatches (total %" PRIu64 "), %" PRIu64 " bad pages (total %" PRIu64 ")\n",
           round, pages, bad, total_mismatches, bad_pages, total_bad_pages);
    if (rounds && round >= rounds) break;
    if (duration && timer::now_ns() - start >= duration) break;
    // The power button: the round just verified is the last one.
    if (power::stop_requested() || power::sleep_unless_stopped(pause)) {
      printf("integrity: stop requested after round %" PRIu64 "\n", round);
      break;
    }
  }
  if (churn)
    printf("integrity: churned %" PRIu64 " regions (%" PRIu64 " allocations failed)\n", churned,
           churn_failures);
  bool invariants_ok = true;
  if (invariants) {
    invariants_ok = mm::pages().check_invariants();
    printf("integrity: allocator invariants %s\n", invariants_ok ? "hold" : "VIOLATED");
  }
  using pattern::Verdict;
  uint64_t by_kind[4] = {};
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < 4; k++) by_kind[k] += g_workers[i].bad_by_kind[k];
  printf("integrity: %s: %" PRIu64 " mismatches, %" PRIu64 " bad pages (stale %" PRIu64
         ", zeroed %" PRIu64 ", foreign %" PRIu64 ")\n",
         total_mismatches ? "FAIL" : "PASS", total_mismatches, total_bad_pages,
         by_kind[static_cast<int>(Verdict::kStale)], by_kind[static_cast<int>(Verdict::kZeroed)],
         by_kind[static_cast<int>(Verdict::kForeign)]);
  return total_mismatches || !invariants_ok ? 1 : 0;
}

}  // namespace

BLIMP_APP(integrity, "integrity", "fill memory with checksummed data and verify it continuously",
          integrity_main);
