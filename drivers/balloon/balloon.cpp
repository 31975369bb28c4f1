// The virtio-balloon driver: probe, interrupts and the work loop. One file per spec section
// beside it: inflate_deflate.cpp, reporting.cpp, hinting.cpp, extension_queue.cpp, and
// recovery.cpp (waiting, timeouts, resets).
#include "drivers/balloon/balloon.h"
#include "drivers/balloon/balloon_internal.h"

#include <new>

#include "drivers/balloon/balloon_policy.h"
#include "drivers/balloon/balloon_protocol.h"
#include "drivers/balloon/balloon_stats.h"
#include "kernel/arch/cpu.h"
#include "kernel/arch/io.h"
#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/percpu.h"
#include "kernel/timer.h"
#include "lib/irq.h"
#include "mm/mm.h"

namespace blimp::balloon {

namespace detail {
DeviceBuffers g_buf;
Scratch g_scratch;
}  // namespace detail

using namespace detail;
namespace {

alignas(Balloon) unsigned char g_storage[sizeof(Balloon)];
Balloon* g_instance = nullptr;

void* alloc_list_page(void*) {
  auto r = mm::pages().alloc_pages(0, mm::Owner::Kernel,
                                   mm::AllocFlags(mm::kAllocZero | mm::kAllocNoReclaim));
  return r.is_error() ? nullptr : phys_to_virt(r.value());
}
void free_list_page(void* p, void*) { mm::pages().free_pages(virt_to_phys(p), 0); }

}  // namespace

Balloon::Balloon(virtio::Device& dev)
    : dev_(dev),
      held_(alloc_list_page, free_list_page, nullptr),
      hinted_(alloc_list_page, free_list_page, nullptr) {}

Balloon* Balloon::instance() { return g_instance; }

void Balloon::register_driver() {
  (void)virtio::register_driver({"virtio-balloon", kDeviceId, probe});
}

ErrorOr<void> Balloon::probe(virtio::Device& dev) {
  if (g_instance) {
    kprintf("balloon: a second balloon device is ignored\n");
    return Error::Busy;
  }
  if (!mm::initialized()) return Error::Unsupported;
  auto* b = new (g_storage) Balloon(dev);
  auto r = b->start();
  if (r.is_error()) {
    b->~Balloon();
    return r.error();
  }
  g_instance = b;
  return {};
}

ErrorOr<void> Balloon::start() {
  // PAGE_POISON (5.5.6.4) tells the host that free pages hold poison_val. Blimp never writes a
  // poison value into free pages, so it never accepts the feature: accepting it would be untrue,
  // and QEMU would then keep every reported page instead of discarding it.
  unsigned long long poison = 0;
  if (cmdline::get_u64("balloon.poison", poison))
    kprintf(
        "balloon: balloon.poison=%#llx ignored: Blimp does not poison free pages, "
        "PAGE_POISON is not negotiated\n",
        poison);
  unsigned long long delay_ms = 0;
  if (cmdline::get_u64("balloon.report_delay_ms", delay_ms))
    report_delay_ns_ = delay_ms * 1000000ull;
  unsigned long long ms = 0;
  if (cmdline::get_u64("balloon.timeout_ms", ms) && ms) timeout_ns_ = ms * 1000000ull;
  if (cmdline::get_u64("balloon.reset_ms", ms) && ms) reset_ns_ = ms * 1000000ull;
  if (reset_ns_ < timeout_ns_) timeout_ns_ = reset_ns_;
  unsigned long long health_ms = 0;
  if (cmdline::get_u64("balloon.health_ms", health_ms))
    health_interval_ns_ = health_ms * 1000000ull;
  const bool reporting_enabled = !cmdline::has_flag("balloon.report=off");
  bool extensions_wanted = !cmdline::has_flag("balloon.extensions=off");

  uint64_t wanted = (1ull << kFeatureMustTellHost) | (1ull << kFeatureStatsVq) |
                    (1ull << kFeatureDeflateOnOom) | (1ull << kFeatureFreePageHint) |
                    (1ull << kFeaturePageReporting);
  // The extensions need the 64-bit feature window of a modern transport (spec section 2).
  if (extensions_wanted && dev_.transport().modern())
    wanted |= (1ull << kFeatureBlimpPageStates) | (1ull << kFeatureBlimpShareHints);
  // Every queue-bearing feature offered is accepted (even reporting with balloon.report=off,
  // which then just goes unused): QEMU creates queues for what it offers, so accepting all of
  // them is the only way both sides agree where each queue is (spec section 3).
  features_ = TRY(dev_.negotiate(wanted));

  // 5.5.2: queues numbered densely in feature order; blimpq last.
  uint16_t next = 0;
  inflate_vq_ = TRY(dev_.add_queue(next++, on_queue_used, this));
  deflate_vq_ = TRY(dev_.add_queue(next++, on_queue_used, this));
  if (dev_.has_feature(kFeatureStatsVq))
    stats_vq_ = TRY(dev_.add_queue(next++, on_stats_used, this));
  if (dev_.has_feature(kFeatureFreePageHint))
    hint_vq_ = TRY(dev_.add_queue(next++, on_queue_used, this));
  if (dev_.has_feature(kFeaturePageReporting)) {
    virtio::QueueOptions o;
    o.max_indirect = kReportBatch;
    virtio::Virtqueue* vq = TRY(dev_.add_queue(next++, on_queue_used, this, o));
    if (reporting_enabled) report_vq_ = vq;
  }
  if (dev_.has_feature(kFeatureBlimpPageStates) || dev_.has_feature(kFeatureBlimpShareHints)) {
    virtio::QueueOptions o;
    o.max_indirect = 4;
    blimp_vq_ = TRY(dev_.add_queue(next++, on_queue_used, this, o));
  }
  dev_.set_config_callback(on_config, this);
  dev_.set_error_callback(on_error, this);
  TRY(dev_.start());

  auto& pages = mm::pages();
  floor_pages_ = default_floor_pages(pages.total_pages());
  unsigned long long floor = 0;
  if (cmdline::get_u64("balloon.floor", floor)) floor_pages_ = floor >> kBalloonPageShift;
  work_item_.fn = work_fn;
  work_item_.context = this;
  report_hook_item_.fn = [](void* c) { on_report_hook(0, c); };
  report_hook_item_.context = this;

  // The stats queue starts with one buffer the host returns whenever it wants fresh numbers.
  if (stats_vq_) stats_requested_ = true;
  // The OOM handler deflates (DEFLATE_ON_OOM) and returns hinted pages (FREE_PAGE_HINT).
  if (dev_.has_feature(kFeatureDeflateOnOom) || hint_vq_) pages.set_oom_handler(on_oom, this);
  // Reporting and hinting both isolate free blocks; neither may take the floor.
  if (report_vq_ || hint_vq_) pages.set_reporting_reserve(floor_pages_);
  // A reported or deflated page comes back either discarded (zero) or untouched
  // (a host that cannot discard, e.g. while its balloon is inhibited): its content is never
  // known, so the allocator must not count such pages as zero. Only the page-state protocol,
  // where the host says what it discarded, tells us a page is zero.
  pages.set_discarded_content_unknown(true);
  if (report_vq_) {
    // Report once 16 MiB of 2 MiB+ blocks are unreported (and everything free at boot).
    pages.set_report_hook(on_report_hook, this, kReportOrder, (16ull << 20) >> 12);
    report_pending_ = true;
  }
  kprintf("balloon: ready, features=%#lx (%s%s%s%s%s), floor %lu MiB, reporting delay %lu ms\n",
          features_, dev_.has_feature(kFeatureMustTellHost) ? "tell-host " : "",
          stats_vq_ ? "stats " : "",
          dev_.has_feature(kFeatureDeflateOnOom) ? "deflate-on-oom " : "",
          hint_vq_ ? "free-page-hint " : "", report_vq_ ? "reporting" : "", mib(floor_pages_),
          report_delay_ns_ / 1000000);
  if (blimp_vq_) {
    kprintf("balloon: Blimp extensions:%s%s\n", has_page_states() ? " page-states" : "",
            has_share_hints() ? " share-hints" : "");
  }
  work::schedule(work_item_);
  arm_health_timer();
  return {};
}

// ---- Interrupt context --------------------------------------------------------------------------

void Balloon::on_config(virtio::Device&, void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  b->config_changed_ = true;
  work::schedule(b->work_item_);
}

void Balloon::on_error(virtio::Device&, void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  b->recover_pending_ = true;
  work::schedule(b->work_item_);
}

// A reset raises no interrupt, and a device that is not DRIVER_OK raises no config interrupt
// either: without a look at the status now and then, an idle guest would never notice.
void Balloon::on_health_timer(void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  b->health_armed_ = false;
  b->health_check_ = true;
  work::schedule(b->work_item_);
}

void Balloon::on_listener_timer(void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  b->listener_timer_armed_ = false;
  work::schedule(b->work_item_);
}

void Balloon::on_stats_used(virtio::Virtqueue& vq, void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  void* token;
  uint32_t len;
  while (true) {
    auto r = vq.pop_used(token, len);
    if (r.is_error()) {
      b->queue_fault_ = !b->dev_.failed();  // a reset by the host is on_error's
      break;
    }
    if (!r.value()) break;
    if (!b->tokens_.accept(token, vq.index(), len)) {
      b->counters_.bad_completions++;
      b->queue_fault_ = true;
      break;
    }
    b->stats_requested_ = true;
  }
  if (b->stats_requested_ || b->queue_fault_) work::schedule(b->work_item_);
}

// Inflate, deflate, hint and reporting completions are collected by the work that waits for
// them; the interrupt only has to wake the CPU.
void Balloon::on_queue_used(virtio::Virtqueue&, void*) {}

void Balloon::on_report_hook(uint64_t, void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  if (percpu::cpu_index() != 0) {
    work::schedule(b->report_hook_item_);  // the BSP calls this again, from its work
    return;
  }
  IrqGuard guard;
  if (b->report_timer_armed_) return;
  b->report_timer_armed_ = true;
  if (timer::call_at(timer::now_ns() + b->report_delay_ns_, on_report_timer, b).is_error()) {
    b->report_timer_armed_ = false;
    b->report_pending_ = true;
    work::schedule(b->work_item_);
  }
}

void Balloon::on_report_timer(void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  b->report_timer_armed_ = false;
  b->report_pending_ = true;
  work::schedule(b->work_item_);
}

// Called from an allocating context once the caches have freed memory for the demand (or have
// nothing left): inflate now, before the app allocates on.
void Balloon::on_demand_met(void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  b->config_changed_ = true;
  work::schedule(b->work_item_);
  work::run_pending();
}

// ---- Bottom half
// ----------------------------------------------------------------------------------

void Balloon::work_fn(void* ctx) { static_cast<Balloon*>(ctx)->work(); }

void Balloon::work() {
  {
    IrqGuard guard;
    if (busy_) {
      // The OOM path is mid-operation further up this stack: try again shortly.
      (void)timer::call_at(
          timer::now_ns() + 10000000ull,
          [](void* c) { work::schedule(static_cast<Balloon*>(c)->work_item_); }, this);
      return;
    }
    busy_ = true;
  }
  if (health_check_) {
    health_check_ = false;
    (void)dev_.check_alive();  // a reset: logged, on_error sets recover_pending_
  }
  if (queue_fault_) {
    queue_fault_ = false;
    reset_device("the stats queue broke (a bogus used entry, or a buffer not in flight)");
  }
  if (recover_pending_) recover();
  if (!dev_.failed() && !lost_ && !gave_up_ && !recover_pending_) {
    if (reset_listeners_.pending()) run_reset_listeners();
    if (stats_requested_) answer_stats();
    if (config_changed_) {
      config_changed_ = false;
      if (hint_vq_) handle_hint_command();
      adjust_to_target();
    }
    if (report_pending_) {
      report_pending_ = false;
      report_free_pages();
    }
  }
  busy_ = false;
  // A host fault during the operations above reset the device: recover on the next pass.
  if (recover_pending_ && !lost_ && !gave_up_) work::schedule(work_item_);
  arm_health_timer();
}

uint64_t Balloon::read_target() {
  uint32_t t = dev_.config_read<uint32_t>(kConfigNumPages);
  return t;
}

void Balloon::set_actual(uint64_t pages) {
  actual_ = pages;
  dev_.config_write<uint32_t>(kConfigActual, static_cast<uint32_t>(pages));
}

void Balloon::answer_stats() {
  stats_requested_ = false;
  // The host polls these stats: a CPU that stopped allocating would otherwise keep its cached
  // pages STABLE (unreportable, undiscardable) from one poll to the next.
  mm::pages().drain_percpu_caches();
  size_t n = build_stats(mm::pages().stats(), g_buf.stats);
  virtio::Segment seg{virt_to_phys(g_buf.stats), uint32_t(n * sizeof(StatEntry))};
  auto r = post(*stats_vq_, std::span<const virtio::Segment>(&seg, 1), {}, tokens_.stats, 0, 0);
  if (r.is_error()) {
    kprintf("balloon: cannot queue the stats buffer: %s\n", error_name(r.error()));
    return;
  }
  stats_vq_->kick();
  counters_.stats_answers++;
}

}  // namespace blimp::balloon
