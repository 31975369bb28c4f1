// The virtio-balloon driver (virtio 1.2, 5.5), built into the page allocator.
//
// Five of the six standard features are negotiated when the device offers them: MUST_TELL_HOST,
// STATS_VQ, DEFLATE_ON_OOM, FREE_PAGE_HINT and PAGE_REPORTING. PAGE_POISON never is: Blimp does
// not fill free pages with a poison value (balloon.poison=VAL is ignored with a warning). Queues
// are numbered densely by negotiated feature, as QEMU and Linux do: inflate 0, deflate 1, then
// stats, free-page-hint and reporting when negotiated.
//
// # Where the work happens
// Interrupt handlers only record what changed (config change, stats request, device error) and
// queue the balloon's WorkItem; the work runs in the interrupt's bottom half with interrupts
// enabled (kernel/deferred_work.h), so a new target is acted on within one interrupt even while
// the app computes. The OOM path (mm's OOM handler) runs in the allocating context. `busy_`
// keeps the two from interleaving: one operation at a time, the other retries.
//
// # CPUs
// The driver runs on the BSP only, and its exclusions (IrqGuard, `busy_`) assume it: its
// interrupts are routed there, deferred work runs there, and the allocator calls its OOM handler
// and cache-demand hook only from contexts that may reclaim, which an AP's thread (interrupts
// masked) never is (kernel/threads.h). The one entry another CPU reaches is the report hook
// (any CPU that frees memory): on an AP it hands itself to the BSP as deferred work.
//
// # State
//   actual_    pages the host has been told about and acknowledged (written to config `actual`);
//              after a reset whose re-telling failed, every page held (the guest does not use
//              them either way, and `actual` is what the host budgets with)
//   held_      every page the balloon owns (RunSet), including buffers still in flight
//   target     read from config `num_pages` whenever the device says its config changed
// Inflate takes cold pages and whole blocks from the allocator (take_pages), several buffers of
// up to 4096 PFNs in flight; deflate tells the host first when MUST_TELL_HOST was
// negotiated and then gives the pages back. A target the guest cannot meet without dropping below
// the free-memory floor is met as far as the floor allows, and reported once.
//
// # Free page reporting
// The allocator calls the report hook when enough unreported free memory in blocks of 2 MiB and
// up has accumulated; after balloon.report_delay (default 100 ms, so a burst of frees is reported
// together) the work isolates such blocks, up to 256 per buffer, sends them on the
// reporting queue, and returns them as Reported when the host has discarded them.
//
// # Device reset
// A reset raises no interrupt, and a reset device raises no config interrupt either (it is not
// DRIVER_OK), so the driver looks: every wait for a buffer checks the device status after 20 ms,
// and a health timer (balloon.health_ms, default 1000) does when idle. recover() reinitialises
// the device, tells it again about every page the balloon holds (an inflation of held_, so
// `actual` is again what the device acknowledged), re-reads the target, and runs the reset
// listeners (page states re-register, sharing re-sends its hints). docs/balloon.md.
//
// # A slow or misbehaving host (the ownership rule)
// Memory the device may still read or write is never reused until the device has returned it or
// has been reset: each use has its own buffer and token (device_buffers.h), and an operation
// returns only when every buffer it posted has come back or the device has been reset. A wait
// that lasts balloon.timeout_ms (default 5000) says so, again every timeout_ms; one that lasts
// balloon.reset_ms (default 20000) resets the device, as does a broken queue (bogus used entry)
// or a completion for a buffer that is not in flight. Resets are followed by recover(), counted,
// and limited: more than kMaxResetsPerMinute in a minute and the balloon gives up, loudly,
// keeping what it holds. A device that does not even complete a reset is lost: every buffer it
// was lent stays lent for good (its pages are never reused). docs/balloon.md.
#pragma once

#include <cstdint>
#include <span>

#include "drivers/balloon/balloon_protocol.h"
#include "drivers/balloon/device_buffers.h"
#include "drivers/balloon/pfn_list.h"
#include "drivers/balloon/reset_listeners.h"
#include "drivers/virtio/device.h"
#include "kernel/deferred_work.h"
#include "lib/error.h"
#include "mm/device_channel.h"
#include "mm/page.h"

namespace blimp::balloon {

struct BalloonCounters {
  uint64_t inflated_pages;  // total ever inflated
  uint64_t deflated_pages;  // total ever deflated (including OOM)
  uint64_t oom_deflated_pages;
  uint64_t oom_events;
  uint64_t reported_pages;
  uint64_t report_buffers;
  uint64_t hinted_pages;
  uint64_t stats_answers;
  uint64_t floor_limited;    // times a target was capped by the floor
  uint64_t cache_demands;    // times the app's caches were asked for memory to reach a target
  uint64_t device_resets;    // resets recovered from
  uint64_t slow_waits;       // waits that lasted past balloon.timeout_ms
  uint64_t renotified;       // waits that notified their queue again (balloon_internal.h)
  uint64_t driver_resets;    // resets the driver did: a wait past balloon.reset_ms, a broken queue
  uint64_t bad_completions;  // completions for a buffer not in flight on that queue
  uint64_t quarantined_pages;  // pages left with a device that could not be reset
};

struct BalloonTestAccess;  // tests/unit/balloon/driver_test.cpp: builds a Balloon over a fake
                           // device

// The balloon is mm's device channel (mm/device_channel.h): kernel/main.cpp hands instance() to
// page_states::init() and sharing::init().
class Balloon final : public mm::DeviceChannel {
 public:
  // Registers the driver with the virtio core (device id 5).
  static void register_driver();
  // The bound balloon, if any.
  static Balloon* instance();

  uint64_t actual_pages() const { return actual_; }
  uint64_t held_pages() const { return held_.pages(); }
  uint64_t target_pages() const { return target_; }
  uint64_t features() const { return features_; }
  const BalloonCounters& counters() const { return counters_; }

  // ---- Blimp extensions (docs/spec-virtio-balloon-blimp.md) ----------------------------------
  bool has_page_states() const override {
    return blimp_vq_ && (features_ >> kFeatureBlimpPageStates) & 1;
  }
  bool has_share_hints() const override {
    return blimp_vq_ && (features_ >> kFeatureBlimpShareHints) & 1;
  }
  // Sends one blimpq request (header + `count` entries of `entry_size` bytes at `entries`, which
  // must stay valid until it returns) and waits for the device's response. Thread or work
  // context, not interrupt context. Errors: Unsupported (extension not negotiated), Busy (another
  // request in progress), InvalidArgument (count), DeviceError (no answer in balloon.reset_ms,
  // a broken queue, a short response: the device was reset, so it forgot the request and
  // everything the extensions registered), Timeout (the device could not even be reset: it may
  // still read `entries` and act on the request, so keep them and what they point at).
  ErrorOr<BlimpResponse> blimp_request(uint16_t type, const void* entries, uint32_t count,
                                       size_t entry_size);
  // mm::DeviceChannel::send: blimp_request.
  ErrorOr<BlimpResponse> send(uint16_t type, const void* entries, uint32_t count,
                              size_t entry_size) override {
    return blimp_request(type, entries, count, entry_size);
  }

  // Runs `fn(ctx)` from the balloon's work after every device reset the balloon recovered from,
  // once the device is working again (reset_listeners.h: Retry runs it again 50 ms later). For
  // clients that must re-send what the device forgot (page-state registration, sharing hints).
  ErrorOr<void> add_reset_listener(ResetListeners::Fn fn, void* ctx) override {
    return reset_listeners_.add(fn, ctx);
  }

 private:
  friend struct BalloonTestAccess;
  explicit Balloon(virtio::Device& dev);
  static ErrorOr<void> probe(virtio::Device& dev);
  ErrorOr<void> start();

  // Interrupt context.
  static void on_config(virtio::Device& dev, void* ctx);
  static void on_error(virtio::Device& dev, void* ctx);
  static void on_stats_used(virtio::Virtqueue& vq, void* ctx);
  static void on_queue_used(virtio::Virtqueue& vq, void* ctx);
  static void on_report_hook(uint64_t unreported_pages, void* ctx);
  static void on_report_timer(void* ctx);
  static void on_demand_met(void* ctx);
  void log_inflation();
  static size_t on_oom(size_t pages_needed, void* ctx);

  // Bottom half.
  static void work_fn(void* ctx);
  void work();
  void recover();
  void retell_held();
  void run_reset_listeners();
  void arm_health_timer();
  static void on_health_timer(void* ctx);
  static void on_listener_timer(void* ctx);
  void answer_stats();
  void adjust_to_target();
  void inflate(uint64_t pages);
  uint64_t deflate(uint64_t pages);
  void keep_ballooned(const mm::PageRun* runs, size_t nruns);
  void report_free_pages();
  void handle_hint_command();
  void hint_free_pages(uint32_t cmd_id);
  bool hint_cancelled(uint32_t cmd_id);
  bool send_hint_cmd(uint32_t word);
  // Returns up to `max_pages` hinted pages to the allocator; how many it returned.
  uint64_t release_hinted_pages(uint64_t max_pages);

  // Waits for the device to return one buffer on `vq` and returns its token. Error::DeviceError:
  // the device was reset meanwhile (by the host, or by the driver after balloon.reset_ms, a
  // broken queue or a bad completion), so nothing posted before is in flight any more, unless
  // the device could not be reset at all (lost()): then every posted buffer stays the device's.
  ErrorOr<BufferToken*> wait_used(virtio::Virtqueue& vq);
  // Posts one buffer with token `t` (its own) on `vq`; the token is idle again on failure.
  ErrorOr<void> post(virtio::Virtqueue& vq, std::span<const virtio::Segment> out,
                     std::span<const virtio::Segment> in, BufferToken& t, uint16_t slot,
                     uint64_t pages);
  // Resets the device after a host fault (`why`), so that no buffer stays with it; schedules
  // recover(). Sets lost_ if the device does not complete the reset.
  void reset_device(const char* why);
  // The host reset the device or asked for a reset: make sure it is reset, schedule recover().
  void device_stopped();
  bool take_buffers_back();
  // The device has been reset since the operation that posted its buffers began.
  bool lost() const { return lost_; }
  void set_actual(uint64_t pages);
  uint64_t read_target();

  virtio::Device& dev_;
  uint64_t features_ = 0;
  virtio::Virtqueue* inflate_vq_ = nullptr;
  virtio::Virtqueue* deflate_vq_ = nullptr;
  virtio::Virtqueue* stats_vq_ = nullptr;
  virtio::Virtqueue* hint_vq_ = nullptr;
  virtio::Virtqueue* report_vq_ = nullptr;
  virtio::Virtqueue* blimp_vq_ = nullptr;
  bool blimp_busy_ = false;

  work::WorkItem work_item_{};
  // The allocator's report hook runs on whichever CPU freed the memory; on an AP it queues this,
  // and the BSP runs the hook (the report timer is the BSP's: kernel/timer.h).
  work::WorkItem report_hook_item_{};
  bool busy_ = false;
  bool config_changed_ = true;
  bool stats_requested_ = false;
  bool report_pending_ = false;
  bool report_timer_armed_ = false;
  bool recover_pending_ = false;
  bool queue_fault_ = false;  // the stats interrupt found a bogus completion: reset from the work
  bool floor_warned_ = false;
  // The demand on the app's caches (what was asked, what they gave, how it ended) is one record,
  // mm::CacheDemand, kept by the allocator: mm::pages().cache_demand().
  struct {
    bool active = false;
    uint64_t pages = 0;  // inflated so far in this (possibly multi-round) inflation
    uint64_t rounds = 0;
    uint64_t t0 = 0;
  } cache_round_;
  bool health_check_ = false;
  bool health_armed_ = false;
  bool listener_timer_armed_ = false;
  uint64_t health_interval_ns_ = 1000000000ull;
  uint64_t resets_ = 0;  // device resets so far: a wait that sees it change lost its buffer
  // A device that did not complete a reset: every buffer it was lent stays lent, and the balloon
  // does nothing more with it.
  bool lost_ = false;
  bool reset_by_driver_ = false;  // the pending recovery follows reset_device(), not the host
  // Too many resets in a minute: the balloon stops and keeps what it holds.
  bool gave_up_ = false;
  static constexpr unsigned kMaxResetsPerMinute = 5;
  uint64_t reset_times_[kMaxResetsPerMinute] = {};
  unsigned reset_times_next_ = 0;
  uint64_t timeout_ns_ = 5000000000ull;  // a wait this long says so (and again every timeout)
  uint64_t reset_ns_ = 20000000000ull;   // a wait this long resets the device
  BufferTokens tokens_;
  ResetListeners reset_listeners_;

  uint64_t actual_ = 0;
  uint64_t target_ = 0;
  uint64_t floor_pages_ = 0;
  uint64_t report_delay_ns_ = 100000000ull;
  RunSet held_;

  uint32_t hint_cmd_id_ = 0;  // the command id we last saw
  RunSet hinted_;             // hinted ranges, isolated from the allocator until DONE
  BalloonCounters counters_{};
};

}  // namespace blimp::balloon
