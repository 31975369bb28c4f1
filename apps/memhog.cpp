// app=memhog: allocates, touches and frees memory in phases given on the command line, so that
// tests and benchmarks can make a guest grow and shrink on cue.
//
//   memhog steps=alloc:512M,wait:2s,free:256M,free:all,wait:1s [chunk=1M] [allow_oom=1]
//
// alloc:SIZE  allocate SIZE in chunks (malloc), writing a tag into every 4 KiB page
// free:SIZE   free the most recently allocated SIZE (free:all frees everything), checking the
//             tags first: a page that lost its content is reported as corruption
// wait:TIME   sleep (the guest halts) for TIME
// Each step prints one "memhog: step N ..." line when it completes; the last line is
// "memhog: done". An allocation that fails (after the allocator has asked shrinkers and the
// balloon for memory) ends the app with status 1, unless allow_oom=1.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/mix.h"
#include "kernel/timer.h"

namespace {

using namespace blimp;

constexpr size_t kMaxChunks = 1 << 16;
void* g_chunks[kMaxChunks];
size_t g_count = 0;
uint64_t g_chunk_size = 1 << 20;
uint64_t g_corrupt = 0;

uint64_t tag_for(const void* page) { return reinterpret_cast<uint64_t>(page) * apps::kGoldenGamma; }

void touch(void* chunk) {
  for (uint64_t off = 0; off < g_chunk_size; off += 4096) {
    auto* p = static_cast<uint8_t*>(chunk) + off;
    *reinterpret_cast<volatile uint64_t*>(p) = tag_for(p);
  }
}

void check_and_free(void* chunk) {
  for (uint64_t off = 0; off < g_chunk_size; off += 4096) {
    auto* p = static_cast<uint8_t*>(chunk) + off;
    uint64_t got = *reinterpret_cast<volatile uint64_t*>(p);
    if (got != tag_for(p)) {
      if (g_corrupt < 10)
        printf("memhog: CORRUPTION at %p: expected %016" PRIx64 " got %016" PRIx64 "\n", p,
               tag_for(p), got);
      g_corrupt++;
    }
  }
  free(chunk);
}

uint64_t held_mib() { return (g_count * g_chunk_size) >> 20; }

int memhog_main(int argc, char** argv) {
  const char* steps = app_args::find(argc, argv, "steps");
  uint64_t allow_oom = 0;
  if (!app_args::get_size("memhog", argc, argv, "chunk", g_chunk_size) ||
      !app_args::get_u64("memhog", argc, argv, "allow_oom", allow_oom))
    return 2;
  if (!steps) {
    printf("memhog: usage: memhog steps=alloc:512M,wait:2s,free:all [chunk=1M] [allow_oom=1]\n");
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
  for (char* save = nullptr, *s = strtok_r(buf, ",", &save); s; s = strtok_r(nullptr, ",", &save)) {
    step++;
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
        touch(p);
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
      for (uint64_t i = 0; i < chunks; i++) check_and_free(g_chunks[--g_count]);
      printf("memhog: step %d freed %" PRIu64 " MiB, holding %" PRIu64 " MiB\n", step,
             (chunks * g_chunk_size) >> 20, held_mib());
    } else if (strcmp(action, "wait") == 0) {
      uint64_t ns;
      if (!app_args::parse_duration(value, ns)) {
        printf("memhog: step %d: bad duration '%s'\n", step, value);
        return 2;
      }
      timer::sleep_ns(ns);
      printf("memhog: step %d waited %s\n", step, value);
    } else {
      printf("memhog: step %d: unknown action '%s' (alloc, free, wait)\n", step, action);
      return 2;
    }
  }
  while (g_count) check_and_free(g_chunks[--g_count]);
  if (g_corrupt) {
    printf("memhog: FAIL: %" PRIu64 " corrupted pages\n", g_corrupt);
    return 1;
  }
  printf("memhog: done\n");
  return 0;
}

}  // namespace

BLIMP_APP(memhog, "memhog", "allocate/touch/free memory in phases: steps=alloc:512M,wait:2s,free:all",
          memhog_main);
