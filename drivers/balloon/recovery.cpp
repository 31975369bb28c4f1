// Waiting for the device, and what happens when it does not answer: the ownership rule, device
// resets (the host's and our own), recover(), and the reset listeners.
#include <cstdarg>

#include "drivers/balloon/balloon.h"
#include "drivers/balloon/balloon_internal.h"
#include "kernel/arch/cpu.h"
#include "kernel/console.h"
#include "kernel/timer.h"
#include "lib/atomic.h"
#include "lib/format.h"
#include "lib/irq.h"
#include "mm/mm.h"

namespace blimp::balloon {

using namespace detail;

namespace {
constexpr uint64_t kListenerRetryNs = 50000000ull;
constexpr uint64_t kMinuteNs = 60000000000ull;
}  // namespace

ErrorOr<void> Balloon::post(virtio::Virtqueue& vq, std::span<const virtio::Segment> out,
                            std::span<const virtio::Segment> in, BufferToken& t, uint16_t slot,
                            uint64_t pages) {
  if (lost_ || gave_up_) return Error::DeviceError;
  if (!tokens_.post(t, vq.index(), slot, pages)) {
    kprintf("balloon: driver bug: a buffer posted twice on queue %u\n", vq.index());
    return Error::Busy;
  }
  auto r = vq.add(out, in, &t);
  if (r.is_error()) tokens_.unpost(t);
  return r;
}

ErrorOr<BufferToken*> Balloon::wait_used(virtio::Virtqueue& vq) {
  const uint64_t start = timer::now_ns();
  const uint64_t resets = resets_;
  const uint64_t reset_at = start + reset_ns_;
  uint64_t next_check = start + kAliveCheckNs;
  uint64_t next_warning = start + timeout_ns_;
  uint64_t next_renotify = start + kRenotifyNs;
  unsigned renotified = 0;
  char why[96];
  for (;;) {
    uint64_t flags = irq_save();
    if (resets_ != resets || lost_) {
      // The device was reset while this wait slept (the balloon's work interrupted an
      // app-context wait): the buffer went with the old rings.
      irq_restore(flags);
      return Error::DeviceError;
    }
    void* raw;
    uint32_t len;
    auto r = vq.pop_used(raw, len);
    if (r.is_error()) {
      irq_restore(flags);
      if (dev_.failed())
        device_stopped();
      else
        reset_device("a queue broke (the device returned a bogus used entry)");
      return Error::DeviceError;
    }
    if (r.value()) {
      BufferToken* t = tokens_.accept(raw, vq.index(), len);
      irq_restore(flags);
      if (!t) {
        counters_.bad_completions++;
        format(why, sizeof why, "queue %u completed a buffer that is not in flight on it",
               vq.index());
        reset_device(why);
        return Error::DeviceError;
      }
      const uint64_t waited = timer::now_ns() - start;
      if (renotified) {
        counters_.renotified++;
        kprintf("balloon: queue %u returned its buffer after %lu ms (notified again %u times)\n",
                vq.index(), waited / 1000000, renotified);
      } else if (waited >= timeout_ns_) {
        kprintf("balloon: queue %u returned its buffer after %lu ms\n", vq.index(),
                waited / 1000000);
      }
      return t;
    }
    const uint64_t now = timer::now_ns();
    if (now >= next_check) {
      // A device reset raises no interrupt: look. A reset is logged by the core and marks the
      // queues broken; the pop above then fails.
      next_check = now + kAliveCheckNs;
      if (dev_.check_alive().is_error()) {
        irq_restore(flags);
        continue;
      }
    }
    if (now >= next_renotify) {
      next_renotify = now + kRenotifyNs;
      if (vq.notify_again()) renotified++;
    }
    if (now >= reset_at) {
      irq_restore(flags);
      format(why, sizeof why, "queue %u held a buffer for %lu ms (balloon.reset_ms)", vq.index(),
             (now - start) / 1000000);
      reset_device(why);
      return Error::DeviceError;
    }
    if (now >= next_warning) {
      if (next_warning == start + timeout_ns_) counters_.slow_waits++;
      next_warning += timeout_ns_;
      irq_restore(flags);
      kprintf(
          "balloon: host fault: queue %u has held a buffer for %lu ms; still waiting (the "
          "device is reset at %lu ms)\n",
          vq.index(), (now - start) / 1000000, reset_ns_ / 1000000);
      continue;
    }
    if (flags & (1u << 9)) {
      // Interrupts were on: sleep until the completion interrupt (or a 10 ms tick, in case the
      // device suppresses interrupts for this queue). wait_until is entered with interrupts
      // still masked and enables them atomically with the halt, so a completion that arrived
      // after the check above cannot be missed until the next tick.
      timer::wait_until(timer::now_ns() + 10000000ull);
      irq_restore(flags);
    } else {
      irq_restore(flags);
      cpu_relax();
    }
  }
}

// The only way to take a buffer back from a device is a reset (virtio 1.2, 2.1 / 3.3.1): after
// it the device uses none of the rings it was given. So a host fault ends here, never in a guess.
void Balloon::reset_device(const char* why) {
  if (lost_) return;
  kprintf(
      "balloon: host fault: %s; resetting the device (%zu buffers lent to it, holding %lu "
      "MiB)\n",
      why, tokens_.in_flight(), mib(held_.pages()));
  counters_.driver_resets++;
  if (take_buffers_back()) reset_by_driver_ = true;
}

// Resets the device; once it reads status 0 it uses none of the buffers it was lent. False (and
// lost_) if it does not complete the reset.
bool Balloon::take_buffers_back() {
  const size_t lent = tokens_.in_flight();
  auto r = dev_.reset();
  resets_++;
  if (r.is_error()) {
    lost_ = true;
    // Hinted blocks stay isolated for good (release_hinted_pages() gives nothing back from a
    // lost device, which may still write them): they are quarantined like a report in flight.
    counters_.quarantined_pages += hinted_.pages();
    kprintf(
        "balloon: host fault: the device did not complete its reset; the %zu buffers lent "
        "to it and the %lu MiB the balloon holds stay with it for good; the balloon stops\n",
        lent, mib(held_.pages()));
    return false;
  }
  tokens_.forget_all();
  recover_pending_ = true;
  work::schedule(work_item_);
  return true;
}

// The host reset the device (status reads 0) or it asked for a reset (DEVICE_NEEDS_RESET); the
// core has logged it and on_error() scheduled recover(). A device that merely asked may still hold
// its rings, so it is reset here too, before the waiting operation lets go of its buffers.
void Balloon::device_stopped() {
  if (lost_) return;
  take_buffers_back();
}

// A reset device has forgotten its rings, the buffers on them and what the Blimp extensions
// registered. It has not given anything back: every page in held_ is still off the allocator's
// free lists, some discarded by the host, some (buffers lost in the reset) perhaps never seen by
// it. (QEMU 7.2 keeps the `actual` it was last told and the target across a reset.)
void Balloon::recover() {
  recover_pending_ = false;
  if (lost_ || gave_up_) return;
  const uint64_t now = timer::now_ns();
  // reset_times_ is a ring of the last kMaxResetsPerMinute recoveries: if the oldest of them is
  // less than a minute old, this one is one too many.
  const uint64_t oldest = reset_times_[reset_times_next_];
  if (counters_.device_resets >= kMaxResetsPerMinute && now - oldest < kMinuteNs) {
    gave_up_ = true;
    (void)dev_.reset();
    tokens_.forget_all();
    kprintf(
        "balloon: host fault: %u device resets within a minute; giving up: the device stays "
        "reset and the balloon keeps the %lu MiB it holds\n",
        kMaxResetsPerMinute + 1, mib(held_.pages()));
    return;
  }
  reset_times_[reset_times_next_] = now;
  reset_times_next_ = (reset_times_next_ + 1) % kMaxResetsPerMinute;
  kprintf(
      "balloon: device reset by the %s; reinitialising it (holding %lu MiB, %lu MiB "
      "acknowledged)\n",
      reset_by_driver_ ? "driver" : "host", mib(held_.pages()), mib(actual_));
  reset_by_driver_ = false;
  // dev_.recover() resets the device first, so whatever was still in flight is the device's no
  // more: its pages are in held_ (inflate, deflate with MUST_TELL_HOST), isolated (reporting,
  // hinting: returned below and by the operation that posted them) and retell_held() covers the
  // balloon's.
  auto r = dev_.recover([](uint16_t, void*, void*) {}, this);
  resets_++;
  tokens_.forget_all();
  if (r.is_error()) {
    kprintf("balloon: recovery failed (%s); the balloon keeps %lu MiB and stops\n",
            error_name(r.error()), mib(held_.pages()));
    return;
  }
  counters_.device_resets++;
  if (hint_vq_) {
    // The free page hinting command died with the device: hinted blocks go back, and the next
    // command id is taken as new.
    uint64_t n = release_hinted_pages(~0ull);
    hint_cmd_id_ = 0;
    if (n) kprintf("balloon: %lu MiB of hinted free memory returned after the reset\n", mib(n));
  }
  retell_held();
  stats_requested_ = stats_vq_ != nullptr;  // the stats buffer went with the old ring
  config_changed_ = true;                   // the target may have moved meanwhile
  if (report_vq_) report_pending_ = true;   // a report in flight was returned unreported
  reset_listeners_.device_reset();
}

// Tells the reinitialised device about every page the balloon holds, as an inflation: a page the
// old device never saw gets discarded now, and `actual` counts up to what the device acknowledged.
// Re-inflating a page the host discarded before is harmless (QEMU discards it again).
void Balloon::retell_held() {
  const uint64_t t0 = timer::now_ns();
  const uint64_t held = held_.pages();
  uint32_t* pfns = g_buf.inflate_pfns[0];
  BufferToken& token = tokens_.inflate[0];
  uint64_t told = 0;
  size_t fill = 0;
  set_actual(0);
  auto send = [&]() -> bool {
    if (fill == 0) return true;
    virtio::Segment seg{virt_to_phys(pfns), uint32_t(fill * 4)};
    if (post(*inflate_vq_, std::span<const virtio::Segment>(&seg, 1), {}, token, 0, fill)
            .is_error())
      return false;
    inflate_vq_->kick();
    if (wait_used(*inflate_vq_).is_error()) return false;
    told += fill;
    set_actual(told);
    fill = 0;
    return true;
  };
  bool ok = held_.for_each([&](const mm::PageRun& run) {
    PfnCursor cursor(&run, 1);
    while (!cursor.done()) {
      fill += cursor.fill(pfns + fill, kPfnsPerBuffer - fill);
      if (fill == kPfnsPerBuffer && !send()) return false;
    }
    return true;
  });
  ok = ok && send();
  // The pages are off the allocator either way: count them all as ballooned. If the device failed
  // again, it was reset again and the next recover() tells it once more.
  set_actual(held);
  if (ok) {
    kprintf("balloon: re-inflated the %lu MiB held across the reset in %lu ms\n", mib(held),
            (timer::now_ns() - t0) / 1000000);
  } else {
    kprintf(
        "balloon: could not tell the device again about %lu of the %lu MiB held across the "
        "reset; they stay ballooned\n",
        mib(held - told), mib(held));
  }
}

void Balloon::run_reset_listeners() {
  const uint64_t gave_up = reset_listeners_.gave_up();
  size_t due = reset_listeners_.run();
  if (reset_listeners_.gave_up() != gave_up)
    kprintf("balloon: a reset listener could not run after %u attempts; given up\n",
            ResetListeners::kMaxAttempts);
  if (due == 0) return;
  IrqGuard guard;
  if (listener_timer_armed_) return;
  if (timer::call_at(timer::now_ns() + kListenerRetryNs, on_listener_timer, this))
    listener_timer_armed_ = true;
}

void Balloon::arm_health_timer() {
  IrqGuard guard;
  if (health_armed_ || health_interval_ns_ == 0 || dev_.failed() || lost_ || gave_up_) return;
  if (timer::call_at(timer::now_ns() + health_interval_ns_, on_health_timer, this))
    health_armed_ = true;
}

}  // namespace blimp::balloon
