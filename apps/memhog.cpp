// app=memhog: allocates, touches and frees memory in phases given on the command line, so that
// tests and benchmarks can make a guest grow and shrink on cue.
//
//   memhog steps=alloc:512M,wait:2s,check:all,free:256M,free:all,wait:1s [chunk=1M]
//          [allow_oom=1] [verify=page|word]
//
// alloc:SIZE  allocate SIZE in chunks (malloc). Every chunk gets a new 64-bit allocation id
//             (1, 2, ...), mixed with each page's address into every word of the page
//             (apps/page_pattern.h), so content is different for every allocation
// free:SIZE   free the most recently allocated SIZE (free:all frees everything), verifying every
//             page first: a page that lost its content is reported as corruption
// check:all   verify every page held, without freeing
// wait:TIME   sleep (the guest halts) for TIME
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
#include "kernel/power.h"
#include "kernel/timer.h"

namespace {

using namespace blimp;

namespace pattern = apps::pattern;

constexpr size_t kMaxChunks = 1 << 16;
void* g_chunks[kMaxChunks];
uint64_t g_ids[kMaxChunks];  // the allocation id of each held chunk
size_t g_count = 0;
uint64_t g_chunk_size = 1 << 20;
uint64_t g_next_id = 1;
unsigned g_words = pattern::kWordsPerPage;  // verify=page; 1 for verify=word
uint64_t g_verified = 0;
uint64_t g_corrupt = 0;
uint64_t g_corrupt_by_kind[4];  // indexed by pattern::Verdict

// "memhog" in ASCII: one salt per app, so one app's pages never decode as another's.
constexpr uint64_t kSalt = 0x6d656d686f67ull;

uint64_t key_for(const uint8_t* page) {
  return pattern::page_key(kSalt, reinterpret_cast<uint64_t>(page) >> 12);
}

void touch(void* chunk, uint64_t id) {
  for (uint64_t off = 0; off < g_chunk_size; off += 4096) {
    auto* p = static_cast<uint8_t*>(chunk) + off;
    pattern::fill_page(reinterpret_cast<volatile uint64_t*>(p), key_for(p), id, g_words);
  }
}

// Verifies every page of the chunk in slot i; returns the number of corrupted pages.
uint64_t check_chunk(size_t i) {
  uint64_t bad = 0;
  for (uint64_t off = 0; off < g_chunk_size; off += 4096) {
    auto* p = static_cast<uint8_t*>(g_chunks[i]) + off;
    uint64_t key = key_for(p);
    pattern::PageCheck c = pattern::check_page(reinterpret_cast<volatile uint64_t*>(p), key,
                                               g_ids[i], g_next_id, g_words);
    g_verified++;
    if (c.verdict == pattern::Verdict::kOk) continue;
    g_corrupt_by_kind[static_cast<int>(c.verdict)]++;
    if (g_corrupt < 10) {
      char kind[64];
      if (c.verdict == pattern::Verdict::kStale)
        snprintf(kind, sizeof kind, "stale: holds allocation %" PRIu64, c.found_generation);
      else if (c.verdict == pattern::Verdict::kZeroed)
        snprintf(kind, sizeof kind, "zeroed");
      else
        snprintf(kind, sizeof kind, "foreign: not this page's data");
      printf("memhog: CORRUPTION at %p (allocation %" PRIu64 ", page %" PRIu64
             " of its chunk): %u of %u words differ, first word %u: expected %016" PRIx64
             " got %016" PRIx64 "; %s\n",
             p, g_ids[i], off / 4096, c.bad_words, g_words, c.first_bad,
             pattern::encode(key, c.first_bad, g_ids[i]), c.first_found, kind);
    }
    g_corrupt++;
    bad++;
  }
  return bad;
}

void check_and_free_last() {
  g_count--;
  check_chunk(g_count);
  free(g_chunks[g_count]);
}

uint64_t held_mib() { return (g_count * g_chunk_size) >> 20; }

int memhog_main(int argc, char** argv) {
  const char* steps = app_args::find(argc, argv, "steps");
  uint64_t allow_oom = 0;
  if (!app_args::get_size("memhog", argc, argv, "chunk", g_chunk_size) ||
      !app_args::get_u64("memhog", argc, argv, "allow_oom", allow_oom))
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
        "[allow_oom=1] [verify=page|word]\n");
    return 2;
  }
  if (g_chunk_size < 4096 || g_chunk_size % 4096) {
    printf("memhog: chunk must be a multiple of 4 KiB\n");
    return 2;
  }
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
      uint64_t chunks = (bytes + g_chunk_size - 1) / g_chunk_size;
      for (uint64_t i = 0; i < chunks; i++) {
        void* p = g_count < kMaxChunks ? malloc(g_chunk_size) : nullptr;
        if (!p) {
          printf("memhog: step %d: out of memory after %" PRIu64 " of %" PRIu64
                 " MiB (holding %" PRIu64 " MiB)\n",
                 step, (i * g_chunk_size) >> 20, bytes >> 20, held_mib());
          if (!allow_oom) return 1;
          break;
        }
        g_ids[g_count] = g_next_id++;
        touch(p, g_ids[g_count]);
        g_chunks[g_count++] = p;
      }
      uint64_t ms = (timer::now_ns() - t0) / 1000000;
      printf("memhog: step %d alloc %" PRIu64 " MiB in %" PRIu64 " ms, holding %" PRIu64 " MiB\n",
             step, bytes >> 20, ms, held_mib());
    } else if (strcmp(action, "free") == 0) {
      uint64_t chunks = g_count;
      if (strcmp(value, "all") != 0) {
        uint64_t bytes;
        if (!app_args::parse_size(value, bytes)) {
          printf("memhog: step %d: bad size '%s'\n", step, value);
          return 2;
        }
        chunks = (bytes + g_chunk_size - 1) / g_chunk_size;
        if (chunks > g_count) chunks = g_count;
      }
      for (uint64_t i = 0; i < chunks; i++) check_and_free_last();
      printf("memhog: step %d freed %" PRIu64 " MiB, holding %" PRIu64 " MiB\n", step,
             (chunks * g_chunk_size) >> 20, held_mib());
    } else if (strcmp(action, "check") == 0) {
      if (strcmp(value, "all") != 0) {
        printf("memhog: step %d: check takes 'all', not '%s'\n", step, value);
        return 2;
      }
      uint64_t bad = 0;
      for (size_t i = 0; i < g_count; i++) bad += check_chunk(i);
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
    } else {
      printf("memhog: step %d: unknown action '%s' (alloc, free, check, wait)\n", step, action);
      return 2;
    }
  }
  while (g_count) check_and_free_last();
  using pattern::Verdict;
  printf("memhog: verified %" PRIu64 " pages, %" PRIu64 " corrupted (stale %" PRIu64
         ", zeroed %" PRIu64 ", foreign %" PRIu64 ")\n",
         g_verified, g_corrupt, g_corrupt_by_kind[static_cast<int>(Verdict::kStale)],
         g_corrupt_by_kind[static_cast<int>(Verdict::kZeroed)],
         g_corrupt_by_kind[static_cast<int>(Verdict::kForeign)]);
  if (g_corrupt) {
    printf("memhog: FAIL: %" PRIu64 " corrupted pages\n", g_corrupt);
    return 1;
  }
  printf("memhog: done\n");
  return 0;
}

}  // namespace

BLIMP_APP(memhog, "memhog",
          "allocate/touch/verify/free memory in phases: steps=alloc:512M,wait:2s,free:all",
          memhog_main);
