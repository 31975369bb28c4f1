// Free page hinting (virtio 1.2, 5.5.6.4): the host announces a command id; the driver answers
// with the id, then hints free blocks, then STOP. Hinted blocks stay off the free lists until the
// host says DONE (or memory gets tight: the OOM path takes them back first).
//
// QEMU (7.2) shows the command id in the config field only while it waits for the driver's
// answer: once hinting has started (its status S_START), the field reads 0, i.e. STOP. So the
// field is read when the device says its configuration changed, never polled: a driver that
// polls it sees STOP right after sending the id and hints nothing.
//
// A hint buffer the device does not return (a restored VM whose device is not serving the
// command the guest saw) ends in a device reset like any other (recovery.cpp): only then are the
// hinted blocks given back, never "as if DONE had come".
#include "drivers/balloon/balloon.h"
#include "drivers/balloon/balloon_internal.h"
#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/timer.h"
#include "mm/mm.h"

namespace blimp::balloon {

using namespace detail;
using mm::PageRun;

void Balloon::handle_hint_command() {
  uint32_t id = dev_.config_read<uint32_t>(kConfigFreePageHintCmdId);
  if (id == hint_cmd_id_) return;
  hint_cmd_id_ = id;
  if (id == kCmdIdDone) {
    uint64_t n = release_hinted_pages(~0ull);
    if (n) kprintf("balloon: free page hinting done, %lu MiB returned\n", mib(n));
  } else if (id != kCmdIdStop) {
    hint_free_pages(id);
  }
}

bool Balloon::hint_cancelled(uint32_t cmd_id) {
  // config_changed_ is set by the config interrupt (work() clears it before handling a new id):
  // only then does the field say something new (a new id, STOP or DONE).
  if (!config_changed_) return false;
  return dev_.config_read<uint32_t>(kConfigFreePageHintCmdId) != cmd_id;
}

// Sends the 4-byte command word (the id, or STOP) and waits for it. False: the device was reset.
bool Balloon::send_hint_cmd(uint32_t word) {
  g_buf.hint_cmd_id = word;
  virtio::Segment seg{virt_to_phys(&g_buf.hint_cmd_id), 4};
  if (post(*hint_vq_, std::span<const virtio::Segment>(&seg, 1), {}, tokens_.hint_cmd, 0, 0)
          .is_error())
    return false;
  hint_vq_->kick();
  return !wait_used(*hint_vq_).is_error();
}

void Balloon::hint_free_pages(uint32_t cmd_id) {
  if (lost_ || gave_up_) return;
  auto& pages = mm::pages();
  uint64_t t0 = timer::now_ns();
  if (!send_hint_cmd(cmd_id)) return;

  uint64_t hinted = 0, buffers = 0;
  bool ok = true;
  PageRun* runs = g_scratch.hint_runs;
  while (ok && !hint_cancelled(cmd_id)) {
    size_t n = pages.isolate_unreported(kReportOrder, runs, kHintRuns);
    if (n == 0) break;
    // One range per buffer, at most 1 GiB each (a descriptor's length is 32 bits), up to
    // kHintsInFlight buffers queued at a time. A range is held in hinted_ before the host sees it.
    SegmentCursor segs(runs, n, kMaxSegmentPages);
    PageRun seg;
    bool have = segs.next(seg);
    while (have && ok && !hint_cancelled(cmd_id)) {
      size_t queued = 0;
      while (have && queued < kHintsInFlight && !hint_cancelled(cmd_id)) {
        if (!hinted_.push(seg)) {
          ok = false;
          break;
        }
        virtio::Segment in{seg.base, uint32_t(seg.pages << kBalloonPageShift)};
        if (post(*hint_vq_, {}, std::span<const virtio::Segment>(&in, 1), tokens_.hint[queued],
                 uint16_t(queued), seg.pages)
                .is_error()) {
          PageRun undo;
          (void)hinted_.pop(seg.pages, &undo, 1);  // the range just pushed: it was never sent
          ok = false;
          break;
        }
        queued++;
        buffers++;
        hinted += seg.pages;
        have = segs.next(seg);
      }
      if (queued) hint_vq_->kick();
      for (; queued; queued--) {
        // A reset: the ranges stay in hinted_ until recover() returns them (or for good, if
        // the device is lost).
        if (wait_used(*hint_vq_).is_error()) {
          ok = false;
          break;
        }
      }
    }
    // Ranges isolated but not sent go straight back to the allocator.
    for (; have; have = segs.next(seg)) pages.return_isolated(&seg, 1, false);
  }
  if (ok) (void)send_hint_cmd(kCmdIdStop);
  counters_.hinted_pages += hinted;
  if (hinted || cmdline::has_flag("balloon.verbose")) {
    kprintf(
        "balloon: hinted %lu MiB of free memory for command %#x (%lu buffers, %lu ms), "
        "holding %lu MiB\n",
        mib(hinted), cmd_id, buffers, (timer::now_ns() - t0) / 1000000, mib(hinted_.pages()));
  }
}

uint64_t Balloon::release_hinted_pages(uint64_t max_pages) {
  if (lost_) return 0;  // the device may still write them
  uint64_t total = 0;
  PageRun* runs = g_scratch.release_runs;
  while (hinted_.pages() && total < max_pages) {
    size_t n = hinted_.pop(max_pages - total, runs, kReportBatch);
    if (n == 0) break;
    for (size_t i = 0; i < n; i++) total += runs[i].pages;
    mm::pages().return_isolated(runs, n, false);
  }
  return total;
}

}  // namespace blimp::balloon
