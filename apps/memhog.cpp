// app=memhog: allocates, touches and frees memory in phases given on the command line, so that
// tests and benchmarks can make a guest grow and shrink on cue.
//
//   memhog steps=alloc:512M,wait:2s,check:all,free:256M,free:all,wait:1s [chunk=1M]
//          [allow_oom=1] [verify=page|word] [threads=1]
//
// alloc:SIZE  allocate SIZE in chunks (malloc). Every chunk gets a new 64-bit allocation id
//             (1, 2, ...), mixed with each page's address into every word of the page
//             (apps/page_pattern.h), so content is different for every allocation
// free:SIZE   free the most recently allocated SIZE (free:all frees everything), verifying every
//             page first: a page that lost its content is reported as corruption
// check:all   verify every page held, without freeing
// wait:TIME   sleep (the guest halts) for TIME
// spin:TIME   keep every worker's CPU busy for TIME (a loop that never halts): what the balloon,
//             reporting and page states do beside a guest whose every CPU computes
// verify=page (default) writes and verifies all 512 words of each page; verify=word only the
// first word (the old, cheaper tag: for benchmarks that time the free path).
// Each step prints one "memhog: step N ..." line when it completes. A corrupted page is printed
// (the first 10) as
//   memhog: CORRUPTION at 0xADDR (allocation A, page P of its chunk): W of 512 words differ,
//   first word I: expected X got Y; KIND
// with KIND "stale: holds allocation B", "zeroed" or "foreign: not this page's data". At the end
// "memhog: verified N pages, M corrupted (stale S, zeroed Z, foreign F)", then the last line,
// "memhog: done", or "memhog: FAIL: M corrupted pages" (status 1). An allocation that fails
// (after the allocator has asked shrinkers and the balloon for memory) ends the app with status
// 1, unless allow_oom=1.
// threads=N (issue 17) runs every alloc, free and check step on N workers at once, one per CPU
// (apps/workers.h: the BSP and threads on the first N-1 other online CPUs; more than are online is
// an error, status 2). Each worker holds its own chunks: a step's chunks are dealt out among the
// workers in turn, each allocates, fills, verifies and frees its share on its own CPU, and free:
// takes each worker's most recent chunks. Waits and the step lines stay the BSP's. A worker on
// an AP cannot reclaim, so there an allocation fails where the BSP's would first have shrunk the
// caches or deflated the balloon. With N > 1, "memhog: N threads, on cpus 0,1,..." comes first,
// "memhog: cpu C verified N pages, M corrupted" per worker before the totals, and the totals
// line ends with ", N threads".
// The power button (power::stop_requested()) cuts a wait short and skips the remaining steps:
// what is held is still verified and freed, and the summary printed.
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
#include "kernel/timer.h"
#include "lib/atomic.h"
#include "lib/format.h"

namespace {

using namespace blimp;

namespace pattern = apps::pattern;

constexpr size_t kMaxChunks = 1 << 16;
uint64_t g_chunk_size = 1 << 20;
unsigned g_words = pattern::kWordsPerPage;  // verify=page; 1 for verify=word
// Allocation ids come from one counter for all workers, so that an id names one chunk and a page
// holding another worker's chunk's content is stale or foreign, never valid.
Atomic<uint64_t> g_next_id{1};
Atomic<uint64_t> g_reported{0};  // CORRUPTION lines printed, over all workers

// "memhog" in ASCII: one salt per app, so one app's pages never decode as another's.
constexpr uint64_t kSalt = 0x6d656d686f67ull;

enum class Action { kAlloc, kFree, kCheck, kSpin };

// One worker's chunks (a stack: it frees its most recent first) and counts. Only its own CPU
// touches it during a step (so it uses kprintf, never printf: kernel/threads.h); the BSP sets the
// step up and reads the results between steps.
struct Worker {
  void** chunks = nullptr;  // its slice of g_chunks
  uint64_t* ids = nullptr;  // the allocation id of each held chunk
  size_t capacity = 0, count = 0;
  // The step: what to do, to how many chunks; what came of it.
  Action action = Action::kCheck;
  uint64_t amount = 0;  // chunks; for kSpin, the end in timer::now_ns()
  uint64_t done = 0;    // chunks allocated or freed
  uint64_t bad = 0;     // corrupted pages seen
  bool out_of_memory = false;
  // Over the whole run.
  uint64_t verified = 0, corrupt = 0;
  uint64_t corrupt_by_kind[4] = {};  // indexed by pattern::Verdict
};

void* g_chunks[kMaxChunks];
uint64_t g_ids[kMaxChunks];
Worker g_workers[percpu::kMaxCpus];
apps::WorkerCpus g_cpus;

uint64_t key_for(const uint8_t* page) {
  return pattern::page_key(kSalt, reinterpret_cast<uint64_t>(page) >> 12);
}

void touch(void* chunk, uint64_t id) {
  for (uint64_t off = 0; off < g_chunk_size; off += 4096) {
    auto* p = static_cast<uint8_t*>(chunk) + off;
    pattern::fill_page(reinterpret_cast<volatile uint64_t*>(p), key_for(p), id, g_words);
  }
}

// Verifies every page of the worker's chunk i; returns the number of corrupted pages.
uint64_t check_chunk(Worker& w, size_t i) {
  uint64_t bad = 0;
  for (uint64_t off = 0; off < g_chunk_size; off += 4096) {
    auto* p = static_cast<uint8_t*>(w.chunks[i]) + off;
    uint64_t key = key_for(p);
    pattern::PageCheck c = pattern::check_page(reinterpret_cast<volatile uint64_t*>(p), key,
                                               w.ids[i], g_next_id.load(), g_words);
    w.verified++;
    if (c.verdict == pattern::Verdict::kOk) continue;
    w.corrupt_by_kind[static_cast<int>(c.verdict)]++;
    if (g_reported.fetch_add(1) < 10) {
      char kind[64];
      if (c.verdict == pattern::Verdict::kStale)
        format(kind, sizeof kind, "stale: holds allocation %lu", c.found_generation);
      else if (c.verdict == pattern::Verdict::kZeroed)
        format(kind, sizeof kind, "zeroed");
      else
        format(kind, sizeof kind, "foreign: not this page's data");
      // kprintf, not printf: any CPU may get here.
      kprintf(
          "memhog: CORRUPTION at %p (allocation %lu, page %lu of its chunk): %u of %u words"
          " differ, first word %u: expected %016lx got %016lx; %s\n",
          p, w.ids[i], off / 4096, c.bad_words, g_words, c.first_bad,
          pattern::encode(key, c.first_bad, w.ids[i]), c.first_found, kind);
    }
    w.corrupt++;
    bad++;
  }
  return bad;
}

// One step's share of the work, on the worker's CPU.
void run_step(void* arg) {
  Worker& w = *static_cast<Worker*>(arg);
  w.done = w.bad = 0;
  w.out_of_memory = false;
  if (w.action == Action::kAlloc) {
    for (; w.done < w.amount; w.done++) {
      // On an AP this fails rather than reclaim (only the BSP runs shrinkers and the balloon).
      void* p = w.count < w.capacity ? malloc(g_chunk_size) : nullptr;
      if (!p) {
        w.out_of_memory = true;
        return;
      }
      w.ids[w.count] = g_next_id.fetch_add(1);
      touch(p, w.ids[w.count]);
      w.chunks[w.count++] = p;
    }
  } else if (w.action == Action::kFree) {
    for (; w.done < w.amount && w.count; w.done++) {
      w.count--;
      w.bad += check_chunk(w, w.count);
      free(w.chunks[w.count]);
    }
  } else if (w.action == Action::kSpin) {
    // Interrupts still reach the BSP (its balloon and reporting work runs on their way out); the
    // power button ends the spin on every CPU.
    while (timer::now_ns() < w.amount && !power::stop_requested()) cpu_relax();
  } else {
    for (size_t i = 0; i < w.count; i++) w.bad += check_chunk(w, i);
  }
}

// Gives `chunks` out among the workers one at a time in turn, skipping (for free) the workers
// with nothing more to give, then runs the step on all of them at once. Sums into done and bad.
bool step_all(Action action, uint64_t chunks, uint64_t& done, uint64_t& bad) {
  const size_t n = g_cpus.count;
  for (size_t i = 0; i < n; i++) {
    g_workers[i].action = action;
    g_workers[i].amount = 0;
  }
  for (uint64_t given = 0, i = 0, idle = 0; given < chunks && idle < n; i = (i + 1) % n) {
    Worker& w = g_workers[i];
    if (action == Action::kFree && w.amount >= w.count) {
      idle++;
      continue;
    }
    idle = 0;
    w.amount++;
    given++;
  }
  if (!apps::run_on_workers("memhog", g_cpus, run_step, g_workers)) return false;
  done = bad = 0;
  for (size_t i = 0; i < n; i++) {
    done += g_workers[i].done;
    bad += g_workers[i].bad;
  }
  return true;
}

uint64_t held_mib() {
  uint64_t chunks = 0;
  for (size_t i = 0; i < g_cpus.count; i++) chunks += g_workers[i].count;
  return (chunks * g_chunk_size) >> 20;
}

bool out_of_memory() {
  for (size_t i = 0; i < g_cpus.count; i++)
    if (g_workers[i].out_of_memory) return true;
  return false;
}

int memhog_main(int argc, char** argv) {
  const char* steps = app_args::find(argc, argv, "steps");
  uint64_t allow_oom = 0, nthreads = 1;
  if (!app_args::get_size("memhog", argc, argv, "chunk", g_chunk_size) ||
      !app_args::get_u64("memhog", argc, argv, "allow_oom", allow_oom) ||
      !app_args::get_u64("memhog", argc, argv, "threads", nthreads))
    return 2;
  if (const char* verify = app_args::find(argc, argv, "verify")) {
    if (strcmp(verify, "page") == 0) {
      g_words = pattern::kWordsPerPage;
    } else if (strcmp(verify, "word") == 0) {
      g_words = 1;
    } else {
      printf("memhog: bad value for verify: %s (page, word)\n", verify);
      return 2;
    }
  }
  if (!steps) {
    printf(
        "memhog: usage: memhog steps=alloc:512M,wait:2s,check:all,free:all [chunk=1M] "
        "[allow_oom=1] [verify=page|word] [threads=1]\n");
    return 2;
  }
  if (g_chunk_size < 4096 || g_chunk_size % 4096) {
    printf("memhog: chunk must be a multiple of 4 KiB\n");
    return 2;
  }
  if (!apps::choose_worker_cpus("memhog", nthreads, g_cpus)) return 2;
  const size_t n = g_cpus.count;
  for (size_t i = 0; i < n; i++) {
    Worker& w = g_workers[i];
    w.capacity = kMaxChunks / n;
    w.chunks = g_chunks + i * w.capacity;
    w.ids = g_ids + i * w.capacity;
  }
  if (n > 1) apps::print_worker_cpus("memhog", g_cpus);
  char buf[512];
  if (strlen(steps) >= sizeof buf) {
    printf("memhog: steps too long\n");
    return 2;
  }
  strcpy(buf, steps);
  int step = 0;
  for (char *save = nullptr, *s = strtok_r(buf, ",", &save); s; s = strtok_r(nullptr, ",", &save)) {
    step++;
    if (power::stop_requested()) {
      printf("memhog: stop requested before step %d\n", step);
      break;
    }
    char* colon = strchr(s, ':');
    if (!colon) {
      printf("memhog: step %d '%s': expected ACTION:VALUE\n", step, s);
      return 2;
    }
    *colon = '\0';
    const char* action = s;
    const char* value = colon + 1;
    uint64_t t0 = timer::now_ns();
    if (strcmp(action, "alloc") == 0) {
      uint64_t bytes;
      if (!app_args::parse_size(value, bytes)) {
        printf("memhog: step %d: bad size '%s'\n", step, value);
        return 2;
      }
      uint64_t chunks = (bytes + g_chunk_size - 1) / g_chunk_size, done, bad;
      if (!step_all(Action::kAlloc, chunks, done, bad)) return 1;
      if (out_of_memory()) {
        printf("memhog: step %d: out of memory after %" PRIu64 " of %" PRIu64
               " MiB (holding %" PRIu64 " MiB)\n",
               step, (done * g_chunk_size) >> 20, bytes >> 20, held_mib());
        if (!allow_oom) return 1;
      }
      uint64_t ms = (timer::now_ns() - t0) / 1000000;
      printf("memhog: step %d alloc %" PRIu64 " MiB in %" PRIu64 " ms, holding %" PRIu64 " MiB\n",
             step, bytes >> 20, ms, held_mib());
    } else if (strcmp(action, "free") == 0) {
      uint64_t chunks = ~0ull;
      if (strcmp(value, "all") != 0) {
        uint64_t bytes;
        if (!app_args::parse_size(value, bytes)) {
          printf("memhog: step %d: bad size '%s'\n", step, value);
          return 2;
        }
        chunks = (bytes + g_chunk_size - 1) / g_chunk_size;
      }
      uint64_t done, bad;
      if (!step_all(Action::kFree, chunks, done, bad)) return 1;
      printf("memhog: step %d freed %" PRIu64 " MiB, holding %" PRIu64 " MiB\n", step,
             (done * g_chunk_size) >> 20, held_mib());
    } else if (strcmp(action, "check") == 0) {
      if (strcmp(value, "all") != 0) {
        printf("memhog: step %d: check takes 'all', not '%s'\n", step, value);
        return 2;
      }
      uint64_t done, bad;
      if (!step_all(Action::kCheck, 0, done, bad)) return 1;
      printf("memhog: step %d checked %" PRIu64 " MiB, %" PRIu64 " corrupted pages\n", step,
             held_mib(), bad);
    } else if (strcmp(action, "wait") == 0) {
      uint64_t ns;
      if (!app_args::parse_duration(value, ns)) {
        printf("memhog: step %d: bad duration '%s'\n", step, value);
        return 2;
      }
      if (power::sleep_unless_stopped(ns)) {
        printf("memhog: step %d wait cut short: stop requested\n", step);
        break;
      }
      printf("memhog: step %d waited %s\n", step, value);
    } else if (strcmp(action, "spin") == 0) {
      uint64_t ns;
      if (!app_args::parse_duration(value, ns)) {
        printf("memhog: step %d: bad duration '%s'\n", step, value);
        return 2;
      }
      for (size_t i = 0; i < n; i++) {
        g_workers[i].action = Action::kSpin;
        g_workers[i].amount = t0 + ns;
      }
      if (!apps::run_on_workers("memhog", g_cpus, run_step, g_workers)) return 1;
      if (power::stop_requested()) {
        printf("memhog: step %d spin cut short: stop requested\n", step);
        break;
      }
      printf("memhog: step %d spun %s on %zu cpus\n", step, value, n);
    } else {
      printf("memhog: step %d: unknown action '%s' (alloc, free, check, wait, spin)\n", step,
             action);
      return 2;
    }
  }
  uint64_t freed, bad;
  if (!step_all(Action::kFree, ~0ull, freed, bad)) return 1;
  // The thread count ends the totals line only with threads=N > 1, so that the line stays as it
  // always was for the tests that match it whole.
  char threads_note[32] = "";
  if (n > 1) format(threads_note, sizeof threads_note, ", %zu threads", n);
  using pattern::Verdict;
  uint64_t verified = 0, corrupt = 0, by_kind[4] = {};
  for (size_t i = 0; i < n; i++) {
    const Worker& w = g_workers[i];
    if (n > 1)
      printf("memhog: cpu %zu verified %" PRIu64 " pages, %" PRIu64 " corrupted\n", g_cpus.cpu[i],
             w.verified, w.corrupt);
    verified += w.verified;
    corrupt += w.corrupt;
    for (int k = 0; k < 4; k++) by_kind[k] += w.corrupt_by_kind[k];
  }
  printf("memhog: verified %" PRIu64 " pages, %" PRIu64 " corrupted (stale %" PRIu64
         ", zeroed %" PRIu64 ", foreign %" PRIu64 ")%s\n",
         verified, corrupt, by_kind[static_cast<int>(Verdict::kStale)],
         by_kind[static_cast<int>(Verdict::kZeroed)], by_kind[static_cast<int>(Verdict::kForeign)],
         threads_note);
  if (corrupt) {
    printf("memhog: FAIL: %" PRIu64 " corrupted pages\n", corrupt);
    return 1;
  }
  printf("memhog: done\n");
  return 0;
}

}  // namespace

BLIMP_APP(memhog, "memhog",
          "allocate/touch/verify/free memory in phases: steps=alloc:512M,wait:2s,free:all",
          memhog_main);
