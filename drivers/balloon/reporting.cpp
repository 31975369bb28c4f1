// Free page reporting (virtio 1.2, 5.5.6.5): free blocks of 2 MiB and up are isolated from the
// allocator, lent to the device in device-writable buffers (it may discard them), and filed as
// Reported when it returns them.
#include "drivers/balloon/balloon.h"
#include "drivers/balloon/balloon_internal.h"
#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/timer.h"
#include "mm/mm.h"

namespace blimp::balloon {

using namespace detail;
using mm::PageRun;

namespace {
uint64_t segment_pages(uint64_t pages) {
  return pages < kMaxSegmentPages ? pages : kMaxSegmentPages;
}
}  // namespace

void Balloon::report_free_pages() {
  if (lost_ || gave_up_) return;
  auto& pages = mm::pages();
  uint64_t t0 = timer::now_ns(), total = 0;
  PageRun* runs = g_scratch.report_runs;
  for (;;) {
    size_t n = pages.isolate_unreported(kReportOrder, runs, kReportBatch);
    if (n == 0) break;
    size_t segs = 0;
    uint64_t batch = 0;
    for (size_t i = 0; i < n; i++) {
      PageRun r = runs[i];
      batch += r.pages;
      while (r.pages && segs < kReportBatch) {
        uint64_t p = segment_pages(r.pages);
        g_buf.report_segs[segs++] = {r.base, uint32_t(p << kBalloonPageShift)};
        r.base += p << kBalloonPageShift;
        r.pages -= p;
      }
    }
    // Reported pages are device-writable: the host may discard them (as Linux does, an in-buffer).
    auto r = post(*report_vq_, {}, std::span<const virtio::Segment>(g_buf.report_segs, segs),
                  tokens_.report, 0, batch);
    if (r.is_error()) {
      pages.return_isolated(runs, n, false);
      kprintf("balloon: cannot queue a report: %s\n", error_name(r.error()));
      break;
    }
    report_vq_->kick();
    auto used = wait_used(*report_vq_);
    if (used.is_error()) {
      if (lost_) {
        // The device may still discard these blocks: they stay isolated, lent to it for good.
        counters_.quarantined_pages += batch;
      } else {
        // The device was reset: it will not touch them. Unreported, they may be reported again.
        pages.return_isolated(runs, n, false);
      }
      break;
    }
    pages.return_isolated(runs, n, true);
    total += batch;
    counters_.report_buffers++;
  }
  counters_.reported_pages += total;
  if (total && cmdline::has_flag("balloon.verbose"))
    kprintf("balloon: reported %lu MiB in %lu ms\n", mib(total), (timer::now_ns() - t0) / 1000000);
}

}  // namespace blimp::balloon
