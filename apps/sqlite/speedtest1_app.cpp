// app=speedtest1: SQLite's own benchmark, test/speedtest1.c from Debian's sqlite3 source
// (compiled unchanged, its main() renamed speedtest1_main), on Blimp.
//
//   app=speedtest1 [speedtest1 options ...] [DATABASE]
//
// Every word is speedtest1's own argument: "--size 20 --verify" as on Linux, and for
// convenience NAME=VALUE is taken as "--NAME VALUE" (size=20 -> --size 20), NAME= as "--NAME"
// (verify= -> --verify). Without a DATABASE (and without --memdb) the database is
// "speedtest1.db" on the in-memory VFS (a RAM disk: apps/sqlite/memvfs.cpp), so the pager reads
// and writes it as it would a file and its page cache holds copies that may be dropped.
// Output: speedtest1's own lines (one per test, "TOTAL", "Verification Hash" with --verify),
// then "speedtest1: done status=S seconds=T vfs_kib=K"; the exit
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
  static const char* const kOne[] = {"cachesize", "journal", "key",     "mmap", "output",
                                     "pagesize",  "repeat",  "script",  "size", "temp",
                                     "testset",   "threads", "vfs",     "reserve"};
  static const char* const kTwo[] = {"heap", "lookaside", "pcache"};
  for (const char* k : kOne)
    if (strcmp(opt, k) == 0) return 1;
  for (const char* k : kTwo)
    if (strcmp(opt, k) == 0) return 2;
  return 0;
}

int speedtest1_run(int argc, char** argv) {
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
    if (a[0] != '-' && eq && eq != a) {
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

  printf("speedtest1: args:");
  for (int i = 1; i < n; i++) printf(" %s", g_args[i]);
  printf("\n");
  uint64_t start = timer::now_ns();
  int status = speedtest1_main(n, g_args);
  double secs = double(timer::now_ns() - start) / 1e9;
  printf("speedtest1: done status=%d seconds=%.3f vfs_kib=%" PRIu64 "\n", status, secs,
         sqlite::memvfs_bytes() >> 10);
  return status;
}

}  // namespace

BLIMP_APP(speedtest1, "speedtest1",
          "SQLite's speedtest1 on an in-memory VFS (--size N, other speedtest1 options)",
          speedtest1_run);
