// app=speedtest1: SQLite's own benchmark, test/speedtest1.c from Debian's sqlite3 source
// (compiled unchanged, its main() renamed speedtest1_main), on Blimp.
//
//   app=speedtest1 [pcache=blimp|sqlite] [speedtest1 options ...] [DATABASE]
//
// Every word but pcache= is speedtest1's own argument: "--size 20 --verify" as on Linux, and for
// convenience NAME=VALUE is taken as "--NAME VALUE" (size=20 -> --size 20), NAME= as "--NAME"
// (verify= -> --verify). Without a DATABASE (and without --memdb) the database is
// "speedtest1.db" on the in-memory VFS (a RAM disk: apps/sqlite/memvfs.cpp), so the pager reads
// and writes it as it would a file and its page cache holds copies that may be dropped.
// pcache=blimp (default): the page cache is apps/sqlite/pcache.cpp, on the page allocator and
// registered as a shrinker, so the balloon can take memory from it mid-run; pcache=sqlite:
// SQLite's own pcache1 on malloc (the heap), which nothing can shrink.
// Output: speedtest1's own lines (one per test, "TOTAL", "Verification Hash" with --verify),
// then "speedtest1: done status=S pcache=... held_kib=... shrunk_pages=... misses=..."; the exit
// status is speedtest1's (0 on success; its fatal errors exit 1).
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "apps/app.h"
#include "apps/sqlite/sqlite3_blimp.h"
#include "kernel/timer.h"
#include "mm/mm.h"

extern "C" int speedtest1_main(int argc, char** argv);

namespace {

using namespace blimp;

constexpr int kMaxArgs = 128;
char* g_args[kMaxArgs + 1];
char g_storage[4096];

// How many values a speedtest1 option takes (its zHelp), so a value is not taken for a DATABASE.
int values_of(const char* opt) {
  while (*opt == '-') opt++;
  static const char* const kOne[] = {"cachesize", "journal", "key",    "mmap",   "output",
                                     "pagesize",  "repeat",  "script", "size",   "temp",
                                     "testset",   "threads", "vfs",    "reserve"};
  static const char* const kTwo[] = {"heap", "lookaside", "pcache"};
  for (const char* k : kOne)
    if (strcmp(opt, k) == 0) return 1;
  for (const char* k : kTwo)
    if (strcmp(opt, k) == 0) return 2;
  return 0;
}

int speedtest1_run(int argc, char** argv) {
  bool own_pcache = true;
  bool has_db = false;
  int n = 0;
  size_t used = 0;
  auto push = [&](const char* s, size_t len) -> bool {
    if (n == kMaxArgs || used + len + 1 > sizeof g_storage) return false;
    memcpy(g_storage + used, s, len);
    g_storage[used + len] = '\0';
    g_args[n++] = g_storage + used;
    used += len + 1;
    return true;
  };
  bool ok = push("speedtest1", 10);
  int pending = 0;  // values still owed to the last option
  for (int i = 1; i < argc && ok; i++) {
    const char* a = argv[i];
    const char* eq = strchr(a, '=');
    if (strncmp(a, "pcache=", 7) == 0) {
      if (strcmp(a + 7, "blimp") == 0)
        own_pcache = true;
      else if (strcmp(a + 7, "sqlite") == 0)
        own_pcache = false;
      else {
        printf("speedtest1: pcache= takes blimp or sqlite, not %s\n", a + 7);
        return 2;
      }
    } else if (a[0] != '-' && eq && eq != a) {
      char opt[64];
      int len = snprintf(opt, sizeof opt, "--%.*s", int(eq - a), a);
      ok = len > 0 && size_t(len) < sizeof opt && push(opt, size_t(len)) &&
           (eq[1] == '\0' || push(eq + 1, strlen(eq + 1)));
      pending = 0;
    } else {
      ok = push(a, strlen(a));
      if (a[0] == '-') {
        pending = values_of(a);
        if (strcmp(a + (a[1] == '-' ? 2 : 1), "memdb") == 0) has_db = true;
      } else if (pending > 0) {
        pending--;
      } else {
        has_db = true;
      }
    }
  }
  if (ok && !has_db) ok = push("speedtest1.db", 13);
  if (!ok) {
    printf("speedtest1: too many arguments\n");
    return 2;
  }
  g_args[n] = nullptr;

  if (own_pcache) {
    int rc = sqlite::install_pcache();
    if (rc != SQLITE_OK) {
      printf("speedtest1: SQLITE_CONFIG_PCACHE2 failed: %d\n", rc);
      return 1;
    }
  }
  printf("speedtest1: args:");
  for (int i = 1; i < n; i++) printf(" %s", g_args[i]);
  printf(" (pcache=%s)\n", own_pcache ? "blimp" : "sqlite");
  uint64_t start = timer::now_ns();
  int status = speedtest1_main(n, g_args);
  double secs = double(timer::now_ns() - start) / 1e9;
  sqlite::PcacheStats s = sqlite::pcache_stats();
  printf("speedtest1: done status=%d seconds=%.3f pcache=%s held_kib=%" PRIu64
         " shrunk_pages=%" PRIu64 " scans=%" PRIu64 " fetches=%" PRIu64 " misses=%" PRIu64
         " alloc_failures=%" PRIu64 " vfs_kib=%" PRIu64 "\n",
         status, secs, own_pcache ? "blimp" : "sqlite", s.held_pages * 4, s.shrunk_pages, s.scans,
         s.fetches, s.misses, s.alloc_failures, sqlite::memvfs_bytes() >> 10);
  return status;
}

}  // namespace

BLIMP_APP(speedtest1, "speedtest1",
          "SQLite's speedtest1 on an in-memory VFS, page cache as a shrinker (--size N, pcache=)",
          speedtest1_run);
