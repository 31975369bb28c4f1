// app=hotpage: a detector for stores a migration loses. It writes a counter into a few pages in a
// tight loop and, before every write, checks that each page still holds the value it wrote last
// (kept in a register, so it survives a migration exactly: CPU state is sent with the VM stopped).
// The pages stay in the CPU's TLB the whole time (a handful of pages, touched every iteration),
// which is what a TCG dirty-tracking hole needs: a page sent by the migration and then written
// through a TLB entry that no longer marks it dirty restores older than the loop.
//
//   hotpage [pages=4] [churn=8M] [report=1s] [duration=0]
//
// churn=SIZE also dirties a SIZE buffer, one store to its next page per iteration (0: off), so a
// precopy migration at a low bandwidth needs several passes: the hot pages are sent in one pass
// and written afterwards, which is when a lost dirty bit shows.
//
// Output: "hotpage: up T ms, N iterations, S stale (total)" every `report`, and for the first 20
// bad reads
//   hotpage: STALE page K (0xADDR): holds X, last written Y (Z writes lost)
// The last line is "hotpage: PASS|FAIL: S stale reads". Exit 0 when every read matched.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>

#include "apps/app.h"
#include "apps/app_args.h"
#include "kernel/power.h"
#include "kernel/timer.h"

namespace {

using namespace blimp;

constexpr unsigned kMaxPages = 16;
alignas(4096) uint64_t g_pages[kMaxPages][512];

int hotpage_main(int argc, char** argv) {
  uint64_t pages = 4, report = 1000000000ull, duration = 0, churn = 8ull << 20;
  if (!app_args::get_u64("hotpage", argc, argv, "pages", pages) ||
      !app_args::get_size("hotpage", argc, argv, "churn", churn) ||
      !app_args::get_duration("hotpage", argc, argv, "report", report) ||
      !app_args::get_duration("hotpage", argc, argv, "duration", duration))
    return 2;
  if (pages == 0 || pages > kMaxPages) {
    printf("hotpage: pages=%" PRIu64 ": need 1..%u\n", pages, kMaxPages);
    return 2;
  }
  const uint64_t churn_pages = churn / 4096;
  volatile uint64_t* churn_buf =
      churn_pages ? static_cast<volatile uint64_t*>(malloc(churn_pages * 4096)) : nullptr;
  if (churn_pages && !churn_buf) {
    printf("hotpage: cannot allocate churn=%" PRIu64 "\n", churn);
    return 2;
  }
  printf("hotpage: %" PRIu64 " pages at %p, churn %" PRIu64 " pages\n", pages,
         static_cast<void*>(g_pages), churn_pages);
  uint64_t cp = 0;
  const uint64_t start = timer::now_ns();
  uint64_t next = start + report, stale = 0, v = 0;
  for (;;) {
    for (uint64_t k = 0; k < pages; k++) {
      volatile uint64_t* w = &g_pages[k][0];
      const uint64_t got = *w;
      if (got != v) {
        if (stale++ < 20)
          printf("hotpage: STALE page %" PRIu64 " (%p): holds %" PRIu64 ", last written %" PRIu64
                 " (%" PRIu64 " writes lost)\n",
                 k, static_cast<const void*>(const_cast<const uint64_t*>(w)), got, v, v - got);
      }
      *w = v + 1;
    }
    v++;
    if (churn_pages) {
      churn_buf[cp * 512] = v | 1;
      if (++cp == churn_pages) cp = 0;
    }
    if ((v & 0xffff) == 0) {
      const uint64_t now = timer::now_ns();
      if (now >= next) {
        printf("hotpage: up %" PRIu64 " ms, %" PRIu64 " iterations, %" PRIu64 " stale\n",
               uint64_t((now - start) / 1000000ull), v, stale);
        next = now + report;
      }
      if (power::stop_requested() || (duration && now - start >= duration)) break;
    }
  }
  printf("hotpage: %s: %" PRIu64 " stale reads\n", stale ? "FAIL" : "PASS", stale);
  return stale ? 1 : 0;
}

}  // namespace

BLIMP_APP(hotpage, "hotpage", "write a few TLB-hot pages in a loop and catch lost stores",
          hotpage_main);
