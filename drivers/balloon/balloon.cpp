#include "drivers/balloon/balloon.h"

#include <new>

#include "drivers/balloon/balloon_policy.h"
#include "drivers/balloon/balloon_protocol.h"
#include "drivers/balloon/balloon_stats.h"
#include "kernel/arch/cpu.h"
#include "kernel/arch/io.h"
#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/timer.h"
#include "lib/irq.h"
#include "mm/mm.h"

namespace blimp::balloon {
namespace {

using mm::PageRun;

constexpr uint64_t kWaitTimeoutNs = 5000000000ul;  // a host that holds a buffer this long is broken
// A wait longer than this reads the device status (a reset raises no interrupt), then again at
// this interval.
constexpr uint64_t kAliveCheckNs = 20000000ul;
constexpr uint64_t kListenerRetryNs = 50000000ul;
constexpr size_t kPfnsPerBuffer = 4096;  // 16 KiB of PFNs: 16 MiB of balloon
constexpr size_t kBuffersInFlight = 4;
constexpr size_t kRunsPerBuffer = 512;
constexpr size_t kReportBatch = 256;  // blocks per reporting buffer (indirect table)
constexpr unsigned kReportOrder = 9;  // 2 MiB
// Free page hinting: runs isolated per step (in g_buf.runs), hint buffers queued before waiting
// for them, and the least the OOM path takes back (64 MiB).
constexpr size_t kHintRuns = 64;
constexpr size_t kHintsInFlight = 32;
constexpr uint64_t kOomHintRelease = 16384;
// A descriptor's length is 32 bits: longer runs go out as several 1 GiB segments.
constexpr uint64_t kMaxSegmentPages = 1ull << 18;

uint64_t segment_pages(uint64_t pages) { return pages < kMaxSegmentPages ? pages : kMaxSegmentPages; }

// Device-visible buffers live in .bss: identity mapped, so their addresses are guest-physical.
struct alignas(4096) StaticBuffers {
  uint32_t pfns[kBuffersInFlight][kPfnsPerBuffer];
  PageRun runs[kRunsPerBuffer];
  StatEntry stats[kMaxStats];
  uint32_t hint_cmd;
  PageRun report_runs[kReportBatch];
  virtio::Segment report_segs[kReportBatch];
};
StaticBuffers g_buf;
uint64_t g_buffer_pages[kBuffersInFlight];  // pages carried by each PFN buffer while in flight

alignas(Balloon) unsigned char g_storage[sizeof(Balloon)];
Balloon* g_instance = nullptr;

void* alloc_list_page(void*) {
  auto r = mm::pages().alloc_pages(0, mm::Owner::Kernel,
                                   mm::AllocFlags(mm::kAllocZero | mm::kAllocNoReclaim));
  return r.is_error() ? nullptr : phys_to_virt(r.value());
}
void free_list_page(void* p, void*) { mm::pages().free_pages(virt_to_phys(p), 0); }

uint64_t mib(uint64_t pages) { return pages >> (20 - kBalloonPageShift); }

}  // namespace

Balloon::Balloon(virtio::Device& dev)
    : dev_(dev), held_(alloc_list_page, free_list_page, nullptr),
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
  unsigned long long poison = 0;
  if (cmdline::get_u64("balloon.poison", poison)) poison_ = static_cast<uint32_t>(poison);
  unsigned long long delay_ms = 0;
  if (cmdline::get_u64("balloon.report_delay_ms", delay_ms)) report_delay_ns_ = delay_ms * 1000000ull;
  unsigned long long health_ms = 0;
  if (cmdline::get_u64("balloon.health_ms", health_ms))
    health_interval_ns_ = health_ms * 1000000ull;
  const bool reporting_enabled = !cmdline::has_flag("balloon.report=off");
  bool extensions_wanted = !cmdline::has_flag("balloon.extensions=off");

  uint64_t wanted = (1ull << kFeatureMustTellHost) | (1ull << kFeatureStatsVq) |
                    (1ull << kFeatureDeflateOnOom) | (1ull << kFeatureFreePageHint) |
                    (1ull << kFeaturePageReporting);
  // Linux's rule: PAGE_POISON only when the guest poisons free pages; otherwise the host may
  // discard reported pages and they come back as zero, which is what Blimp expects.
  if (poison_) wanted |= 1ull << kFeaturePagePoison;
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
  if (dev_.has_feature(kFeatureStatsVq)) stats_vq_ = TRY(dev_.add_queue(next++, on_stats_used, this));
  if (dev_.has_feature(kFeatureFreePageHint)) hint_vq_ = TRY(dev_.add_queue(next++, on_queue_used, this));
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
  if (dev_.has_feature(kFeaturePagePoison)) dev_.config_write<uint32_t>(kConfigPoisonVal, poison_);
  TRY(dev_.start());

  auto& pages = mm::pages();
  floor_pages_ = default_floor_pages(pages.total_pages());
  unsigned long long floor = 0;
  if (cmdline::get_u64("balloon.floor", floor)) floor_pages_ = floor >> kBalloonPageShift;
  work_item_.fn = work_fn;
  work_item_.context = this;

  // The stats queue starts with one buffer the host returns whenever it wants fresh numbers.
  if (stats_vq_) stats_requested_ = true;
  // The OOM handler deflates (DEFLATE_ON_OOM) and returns hinted pages (FREE_PAGE_HINT).
  if (dev_.has_feature(kFeatureDeflateOnOom) || hint_vq_) pages.set_oom_handler(on_oom, this);
  // Reporting and hinting both isolate free blocks; neither may take the floor.
  if (report_vq_ || hint_vq_) pages.set_reporting_reserve(floor_pages_);
  // A reported or deflated page comes back either discarded (zero, or poison_val) or untouched
  // (a host that cannot discard, e.g. while its balloon is inhibited): its content is never
  // known, so the allocator must not count such pages as zero. Only the page-state protocol,
  // where the host says what it discarded, tells us a page is zero.
  pages.set_page_poisoning(true);
  if (report_vq_) {
    // Report once 16 MiB of 2 MiB+ blocks are unreported (and everything free at boot).
    pages.set_report_hook(on_report_hook, this, kReportOrder, (16ull << 20) >> 12);
    report_pending_ = true;
  }
  kprintf("balloon: ready, features=%#lx (%s%s%s%s%s%s), floor %lu MiB, reporting delay %lu ms\n",
          features_, dev_.has_feature(kFeatureMustTellHost) ? "tell-host " : "",
          stats_vq_ ? "stats " : "", dev_.has_feature(kFeatureDeflateOnOom) ? "deflate-on-oom " : "",
          hint_vq_ ? "free-page-hint " : "", dev_.has_feature(kFeaturePagePoison) ? "poison " : "",
          report_vq_ ? "reporting" : "", mib(floor_pages_), report_delay_ns_ / 1000000);
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
    if (r.is_error() || !r.value()) break;
    b->stats_requested_ = true;
  }
  if (b->stats_requested_) work::schedule(b->work_item_);
}

// Inflate, deflate, hint and reporting completions are collected by the work that waits for
// them; the interrupt only has to wake the CPU.
void Balloon::on_queue_used(virtio::Virtqueue&, void*) {}

void Balloon::on_report_hook(uint64_t, void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
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

// ---- Bottom half ----------------------------------------------------------------------------------

void Balloon::work_fn(void* ctx) { static_cast<Balloon*>(ctx)->work(); }

void Balloon::work() {
  {
    IrqGuard guard;
    if (busy_) {
      // The OOM path is mid-operation further up this stack: try again shortly.
      (void)timer::call_at(timer::now_ns() + 10000000ull, [](void* c) {
        work::schedule(static_cast<Balloon*>(c)->work_item_);
      }, this);
      return;
    }
    busy_ = true;
  }
  if (health_check_) {
    health_check_ = false;
    (void)dev_.check_alive();  // a reset: logged, on_error sets recover_pending_
  }
  if (recover_pending_) recover();
  if (!dev_.failed()) {
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
  arm_health_timer();
}

void Balloon::arm_health_timer() {
  IrqGuard guard;
  if (health_armed_ || health_interval_ns_ == 0 || dev_.failed()) return;
  if (timer::call_at(timer::now_ns() + health_interval_ns_, on_health_timer, this))
    health_armed_ = true;
}

bool Balloon::wait_used(virtio::Virtqueue& vq, void*& token, uint32_t& len) {
  const uint64_t start = timer::now_ns();
  const uint64_t deadline = start + kWaitTimeoutNs;
  const uint64_t resets = resets_;
  uint64_t next_check = start + kAliveCheckNs;
  for (;;) {
    uint64_t flags = irq_save();
    if (resets_ != resets) {
      // The balloon's work recovered from a reset while this (app-context) wait slept: the
      // buffer went with the old rings.
      irq_restore(flags);
      return false;
    }
    auto r = vq.pop_used(token, len);
    if (r.is_error()) {
      irq_restore(flags);
      return false;
    }
    if (r.value()) {
      irq_restore(flags);
      return true;
    }
    const uint64_t now = timer::now_ns();
    if (now > next_check) {
      // A device reset raises no interrupt: look. A reset is logged by the core, marks the
      // queues broken and queues the recovery (on_error).
      next_check = now + kAliveCheckNs;
      if (dev_.check_alive().is_error()) {
        irq_restore(flags);
        return false;
      }
    }
    if (now > deadline) {
      irq_restore(flags);
      kprintf("balloon: the host did not return a buffer on queue %u within %lu s\n", vq.index(),
              kWaitTimeoutNs / 1000000000ul);
      return false;
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
      arch::cpu_pause();
    }
  }
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
  size_t n = build_stats(mm::pages().stats(), g_buf.stats);
  auto r = stats_vq_->add_out(virt_to_phys(g_buf.stats), uint32_t(n * sizeof(StatEntry)), g_buf.stats);
  if (r.is_error()) {
    kprintf("balloon: cannot queue the stats buffer: %s\n", error_name(r.error()));
    return;
  }
  stats_vq_->kick();
  counters_.stats_answers++;
}

void Balloon::adjust_to_target() {
  uint64_t previous = target_;
  target_ = read_target();
  // The allocator drops a demand when the caches had nothing more to give: do not ask again
  // until the host sets a new target.
  if (demand_out_ && mm::pages().balloon_demand() == 0) caches_exhausted_ = true;
  if (target_ != previous) {
    caches_exhausted_ = false;
    log_inflation();  // one fed by the caches that this target cuts short
  }
  demand_out_ = false;
  // Planned afresh from the free memory there is now (and nothing the balloon itself allocates
  // below may wait for its own demand).
  mm::pages().set_balloon_demand(0, nullptr, nullptr);
  uint64_t total = mm::pages().total_pages();
  if (target_ > total) {
    kprintf("balloon: host asks for %lu MiB, more than the guest's %lu MiB of RAM; "
            "inflating as far as the floor allows\n", mib(target_), mib(total));
  }
  if (target_ > actual_) {
    inflate(target_ - actual_);
  } else if (target_ < actual_) {
    deflate(actual_ - target_);
  }
}

void Balloon::inflate(uint64_t want) {
  auto& pages = mm::pages();
  uint64_t t0 = timer::now_ns(), done = 0;
  const uint64_t goal = held_.pages() + want;
  size_t next = 0, in_flight = 0;
  bool stop = false;
  while (!stop || in_flight) {
    // Fill free buffers while there is something to inflate.
    while (!stop && in_flight < kBuffersInFlight) {
      InflatePlan plan = plan_inflate(goal, held_.pages(), pages.free_pages_count(), floor_pages_);
      if (plan.pages == 0) {
        // Free memory is down to the floor. The app's caches count as available memory (the
        // host balances guests on that figure), so ask them for the rest: the app's next
        // allocations shrink them, and on_demand_met brings us back with what they freed. Not
        // for a cache under a megabyte (one the app refills page by page would be traded back
        // and forth forever), and not again once a demand found the caches empty.
        constexpr uint64_t kMinDemand = (1ull << 20) >> kBalloonPageShift;
        uint64_t cache = plan.limited ? pages.stats().cache_bytes >> kBalloonPageShift : 0;
        if (cache >= kMinDemand && !caches_exhausted_) {
          uint64_t missing = goal - held_.pages();
          demand_out_ = true;
          pages.set_balloon_demand(floor_pages_ + (missing < cache ? missing : cache), on_demand_met,
                                   this);
          counters_.cache_demands++;
          cache_round_.rounds++;
          stop = true;
          break;
        }
        if (plan.limited) {
          counters_.floor_limited++;
          if (!floor_warned_) {
            kprintf("balloon: target %lu MiB not reachable: holding %lu MiB, keeping %lu MiB "
                    "free for the kernel and the app\n", mib(target_), mib(held_.pages()),
                    mib(floor_pages_));
            floor_warned_ = true;
          }
        }
        stop = true;
        break;
      }
      size_t slot = next;
      uint64_t chunk = plan.pages < kPfnsPerBuffer ? plan.pages : kPfnsPerBuffer;
      size_t nruns = pages.take_pages(chunk, mm::Owner::Balloon, g_buf.runs, kRunsPerBuffer);
      if (nruns == 0) {
        stop = true;
        break;
      }
      uint64_t taken = 0;
      for (size_t i = 0; i < nruns; i++) {
        if (!held_.push(g_buf.runs[i])) {
          kprintf("balloon: out of memory for the balloon's page list; stopping at %lu MiB\n",
                  mib(held_.pages()));
          pages.give_back(g_buf.runs + i, nruns - i, false);
          nruns = i;
          stop = true;
          break;
        }
        taken += g_buf.runs[i].pages;
      }
      PfnCursor cursor(g_buf.runs, nruns);
      size_t n = cursor.fill(g_buf.pfns[slot], kPfnsPerBuffer);
      if (n == 0) break;
      auto r = inflate_vq_->add_out(virt_to_phys(g_buf.pfns[slot]), uint32_t(n * 4),
                                    &g_buffer_pages[slot]);
      if (r.is_error()) {
        kprintf("balloon: cannot queue an inflate buffer: %s\n", error_name(r.error()));
        stop = true;
        break;
      }
      g_buffer_pages[slot] = taken;
      done += taken;
      in_flight++;
      next = (next + 1) % kBuffersInFlight;
      inflate_vq_->kick();
      // A new, lower target (config interrupt while we work) ends this inflation early.
      if (config_changed_ && read_target() < actual_ + done) stop = true;
    }
    if (!in_flight) break;
    void* token;
    uint32_t len;
    if (!wait_used(*inflate_vq_, token, len)) break;
    in_flight--;
    uint64_t acked = *static_cast<uint64_t*>(token);
    set_actual(actual_ + acked);
    counters_.inflated_pages += acked;
  }
  // An inflation fed by the app's caches comes in many rounds (one per demand met): one line for
  // the whole of it, when it ends.
  if (!cache_round_.active) {
    cache_round_.active = true;
    cache_round_.t0 = t0;
  }
  cache_round_.pages += done;
  if (!demand_out_) log_inflation();
}

void Balloon::log_inflation() {
  if (!cache_round_.active) return;
  uint64_t ms = (timer::now_ns() - cache_round_.t0) / 1000000;
  if (cache_round_.pages && cache_round_.rounds) {
    kprintf("balloon: inflated %lu MiB in %lu ms (%lu rounds shrinking the app's caches), now %lu MiB\n",
            mib(cache_round_.pages), ms, cache_round_.rounds + 1, mib(actual_));
  } else if (cache_round_.pages) {
    kprintf("balloon: inflated %lu MiB in %lu ms, now %lu MiB\n", mib(cache_round_.pages), ms,
            mib(actual_));
  }
  cache_round_ = {};
}

uint64_t Balloon::deflate(uint64_t want) {
  auto& pages = mm::pages();
  bool tell_first = dev_.has_feature(kFeatureMustTellHost);
  uint64_t t0 = timer::now_ns(), done = 0;
  while (done < want && held_.pages()) {
    uint64_t chunk = want - done < kPfnsPerBuffer ? want - done : kPfnsPerBuffer;
    size_t nruns = held_.pop(chunk, g_buf.runs, kRunsPerBuffer);
    if (nruns == 0) break;
    uint64_t n_pages = 0;
    for (size_t i = 0; i < nruns; i++) n_pages += g_buf.runs[i].pages;
    PfnCursor cursor(g_buf.runs, nruns);
    size_t n = cursor.fill(g_buf.pfns[0], kPfnsPerBuffer);
    // Without MUST_TELL_HOST the pages may be used before the host hears of them (5.5.6.2).
    if (!tell_first) pages.give_back(g_buf.runs, nruns, true);
    bool told = false;
    if (n && deflate_vq_->add_out(virt_to_phys(g_buf.pfns[0]), uint32_t(n * 4), g_buf.pfns[0])) {
      deflate_vq_->kick();
      void* token;
      uint32_t len;
      told = wait_used(*deflate_vq_, token, len);
    }
    if (tell_first) {
      if (!told) {
        // 5.5.6.2: with MUST_TELL_HOST the driver must not reuse pages before the host has
        // acknowledged them. Keep them ballooned and stop.
        for (size_t i = 0; i < nruns; i++) (void)held_.push(g_buf.runs[i]);
        kprintf("balloon: the host did not acknowledge a deflate; keeping %lu MiB ballooned\n",
                mib(n_pages));
        break;
      }
      pages.give_back(g_buf.runs, nruns, true);
    }
    done += n_pages;
    set_actual(actual_ > n_pages ? actual_ - n_pages : 0);
    counters_.deflated_pages += n_pages;
  }
  if (done) {
    kprintf("balloon: deflated %lu MiB in %lu ms, now %lu MiB\n", mib(done),
            (timer::now_ns() - t0) / 1000000, mib(actual_));
  }
  return done;
}

size_t Balloon::on_oom(size_t needed, void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  {
    IrqGuard guard;
    if (b->busy_) return 0;  // the balloon's own work is what is allocating
    b->busy_ = true;
  }
  b->counters_.oom_events++;
  // Hinted pages first: they are free memory the host merely knows about.
  uint64_t freed = b->release_hinted_pages(needed > kOomHintRelease ? needed : kOomHintRelease);
  if (freed) kprintf("balloon: returned %lu MiB of hinted pages on out-of-memory\n", mib(freed));
  if (freed < needed && b->dev_.has_feature(kFeatureDeflateOnOom)) {
    uint64_t n = plan_oom_deflate(needed - freed, b->held_.pages());
    uint64_t got = n ? b->deflate(n) : 0;
    b->counters_.oom_deflated_pages += got;
    freed += got;
    if (got) kprintf("balloon: deflated %lu MiB on out-of-memory\n", mib(got));
  }
  b->busy_ = false;
  return freed;
}

void Balloon::report_free_pages() {
  auto& pages = mm::pages();
  uint64_t t0 = timer::now_ns(), total = 0;
  for (;;) {
    size_t n = pages.isolate_unreported(kReportOrder, g_buf.report_runs, kReportBatch);
    if (n == 0) break;
    size_t segs = 0;
    uint64_t batch = 0;
    for (size_t i = 0; i < n; i++) {
      PageRun r = g_buf.report_runs[i];
      batch += r.pages;
      while (r.pages && segs < kReportBatch) {
        uint64_t p = segment_pages(r.pages);
        g_buf.report_segs[segs++] = {r.base, uint32_t(p << kBalloonPageShift)};
        r.base += p << kBalloonPageShift;
        r.pages -= p;
      }
    }
    // Reported pages are device-writable: the host may discard them (as Linux does, an in-buffer).
    auto r = report_vq_->add({}, std::span<const virtio::Segment>(g_buf.report_segs, segs),
                             g_buf.report_runs);
    if (r.is_error()) {
      pages.return_isolated(g_buf.report_runs, n, false);
      kprintf("balloon: cannot queue a report: %s\n", error_name(r.error()));
      break;
    }
    report_vq_->kick();
    void* token;
    uint32_t len;
    bool ok = wait_used(*report_vq_, token, len);
    pages.return_isolated(g_buf.report_runs, n, ok);
    if (!ok) break;
    total += batch;
    counters_.report_buffers++;
  }
  counters_.reported_pages += total;
  if (total && cmdline::has_flag("balloon.verbose"))
    kprintf("balloon: reported %lu MiB in %lu ms\n", mib(total), (timer::now_ns() - t0) / 1000000);
}

// Free page hinting (5.5.6.4): the host announces a command id; the driver answers with the id,
// then hints free blocks, then STOP. Hinted blocks stay off the free lists until the host says
// DONE (or memory gets tight: the OOM path takes them back first).
//
// QEMU (7.2) shows the command id in the config field only while it waits for the driver's
// answer: once hinting has started (its status S_START), the field reads 0, i.e. STOP. So the
// field is read when the device says its configuration changed, never polled: a driver that
// polls it sees STOP right after sending the id and hints nothing.
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

void Balloon::hint_free_pages(uint32_t cmd_id) {
  auto& pages = mm::pages();
  uint64_t t0 = timer::now_ns();
  void* token;
  uint32_t len;
  g_buf.hint_cmd = cmd_id;
  if (hint_vq_->add_out(virt_to_phys(&g_buf.hint_cmd), 4, &g_buf.hint_cmd).is_error()) return;
  hint_vq_->kick();
  if (!wait_used(*hint_vq_, token, len)) return;

  uint64_t hinted = 0, buffers = 0;
  bool ok = true;
  while (ok && !hint_cancelled(cmd_id)) {
    size_t n = pages.isolate_unreported(kReportOrder, g_buf.runs, kHintRuns);
    if (n == 0) break;
    // One range per buffer, at most 1 GiB each (a descriptor's length is 32 bits), up to
    // kHintsInFlight buffers queued at a time. A range is held in hinted_ before the host sees it.
    SegmentCursor segs(g_buf.runs, n, kMaxSegmentPages);
    PageRun seg;
    bool have = segs.next(seg);
    while (have && ok && !hint_cancelled(cmd_id)) {
      size_t queued = 0;
      while (have && queued < kHintsInFlight && !hint_cancelled(cmd_id)) {
        if (!hinted_.push(seg)) {
          ok = false;
          break;
        }
        if (hint_vq_->add_in(seg.base, uint32_t(seg.pages << kBalloonPageShift), &g_buf.hint_cmd)
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
        if (!wait_used(*hint_vq_, token, len)) {
          ok = false;  // the ranges stay held (isolated) until DONE or the OOM path
          break;
        }
      }
    }
    // Ranges isolated but not sent go straight back to the allocator.
    for (; have; have = segs.next(seg)) pages.return_isolated(&seg, 1, false);
  }
  g_buf.hint_cmd = kCmdIdStop;
  if (hint_vq_->add_out(virt_to_phys(&g_buf.hint_cmd), 4, &g_buf.hint_cmd)) {
    hint_vq_->kick();
    (void)wait_used(*hint_vq_, token, len);
  }
  counters_.hinted_pages += hinted;
  if (hinted || cmdline::has_flag("balloon.verbose")) {
    kprintf(
        "balloon: hinted %lu MiB of free memory for command %#x (%lu buffers, %lu ms), "
        "holding %lu MiB\n",
        mib(hinted), cmd_id, buffers, (timer::now_ns() - t0) / 1000000, mib(hinted_.pages()));
  }
}

uint64_t Balloon::release_hinted_pages(uint64_t max_pages) {
  uint64_t total = 0;
  while (hinted_.pages() && total < max_pages) {
    size_t n = hinted_.pop(max_pages - total, g_buf.report_runs, kReportBatch);
    if (n == 0) break;
    for (size_t i = 0; i < n; i++) total += g_buf.report_runs[i].pages;
    mm::pages().return_isolated(g_buf.report_runs, n, false);
  }
  return total;
}

ErrorOr<BlimpResponse> Balloon::blimp_request(uint16_t type, const void* entries,
                                              uint32_t count, size_t entry_size) {
  if (!blimp_vq_) return Error::Unsupported;
  if (count > kBlimpMaxEntries || (count && !entries)) return Error::InvalidArgument;
  {
    IrqGuard guard;
    if (blimp_busy_) return Error::Busy;
    blimp_busy_ = true;
  }
  static BlimpRequestHeader header;
  static BlimpResponse response;
  header = {type, 0, count, 0};
  response = {~0u, 0, 0, 0};
  virtio::Segment out[2] = {{virt_to_phys(&header), sizeof header},
                            {virt_to_phys(entries), uint32_t(count * entry_size)}};
  virtio::Segment in[1] = {{virt_to_phys(&response), sizeof response}};
  ErrorOr<BlimpResponse> result = Error::DeviceError;
  auto r = blimp_vq_->add(std::span<const virtio::Segment>(out, count ? 2 : 1),
                          std::span<const virtio::Segment>(in, 1), &header);
  if (r.is_error()) {
    result = r.error();
  } else {
    blimp_vq_->kick();
    void* token;
    uint32_t len;
    if (wait_used(*blimp_vq_, token, len)) {
      if (len >= sizeof response) {
        result = response;
      } else {
        kprintf("balloon: blimpq answered request type %u with %u bytes, not a response\n", type,
                len);
      }
    }
  }
  blimp_busy_ = false;
  return result;
}

// A reset device has forgotten its rings, the buffers on them and what the Blimp extensions
// registered. It has not given anything back: every page in held_ is still off the allocator's
// free lists, some discarded by the host, some (buffers lost in the reset) perhaps never seen by
// it. (QEMU 7.2 keeps the `actual` it was last told and the target across a reset.)
void Balloon::recover() {
  recover_pending_ = false;
  kprintf(
      "balloon: device reset by the host; reinitialising it (holding %lu MiB, %lu MiB "
      "acknowledged)\n",
      mib(held_.pages()), mib(actual_));
  // Every wait on a queue is synchronous, so a buffer still in flight belongs to an operation
  // that already gave up on it: its pages are in held_ (inflate) or back in held_ (deflate with
  // MUST_TELL_HOST), and retell_held() below covers them.
  auto reclaim = [](uint16_t, void*, void*) {};
  auto r = dev_.recover(reclaim, this);
  resets_++;
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
  uint64_t told = 0;
  size_t fill = 0;
  set_actual(0);
  auto send = [&]() -> bool {
    if (fill == 0) return true;
    auto r = inflate_vq_->add_out(virt_to_phys(g_buf.pfns[0]), uint32_t(fill * 4), g_buf.pfns[0]);
    if (r.is_error()) return false;
    inflate_vq_->kick();
    void* token;
    uint32_t len;
    if (!wait_used(*inflate_vq_, token, len)) return false;
    told += fill;
    set_actual(told);
    fill = 0;
    return true;
  };
  bool ok = held_.for_each([&](const PageRun& run) {
    PfnCursor cursor(&run, 1);
    while (!cursor.done()) {
      fill += cursor.fill(g_buf.pfns[0] + fill, kPfnsPerBuffer - fill);
      if (fill == kPfnsPerBuffer && !send()) return false;
    }
    return true;
  });
  ok = ok && send();
  // The pages are off the allocator either way: count them all as ballooned.
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

}  // namespace blimp::balloon
