// Inflate, deflate and deflate-on-OOM (virtio 1.2, 5.5.6.1 - 5.5.6.3): moving the balloon
// towards the host's target, taking cold pages and whole blocks from the allocator, and giving
// pages back under memory pressure.
#include "drivers/balloon/balloon.h"
#include "drivers/balloon/balloon_internal.h"
#include "drivers/balloon/balloon_policy.h"
#include "kernel/console.h"
#include "kernel/timer.h"
#include "mm/mm.h"

namespace blimp::balloon {

using namespace detail;
using mm::PageRun;

namespace {
// Free page hinting: the least the OOM path takes back (64 MiB).
constexpr uint64_t kOomHintRelease = 16384;
}  // namespace

void Balloon::adjust_to_target() {
  uint64_t previous = target_;
  target_ = read_target();
  // The demand on the app's caches is planned afresh from the free memory there is now (and
  // nothing the balloon itself allocates below may wait for its own demand). One they could not
  // serve (Exhausted) stays on record, so they are not asked again until the host sets a new
  // target.
  mm::pages().end_cache_demand();
  if (target_ != previous) {
    mm::pages().forget_cache_demand();
    log_inflation();  // one fed by the caches that this target cuts short
  }
  uint64_t total = mm::pages().total_pages();
  if (target_ > total) {
    kprintf(
        "balloon: host asks for %lu MiB, more than the guest's %lu MiB of RAM; "
        "inflating as far as the floor allows\n",
        mib(target_), mib(total));
  }
  if (target_ > actual_) {
    inflate(target_ - actual_);
  } else if (target_ < actual_) {
    deflate(actual_ - target_);
  }
}

void Balloon::inflate(uint64_t want) {
  if (lost_ || gave_up_) return;
  auto& pages = mm::pages();
  uint64_t t0 = timer::now_ns(), done = 0;
  const uint64_t goal = held_.pages() + want;
  size_t in_flight = 0;
  bool stop = false, asked_caches = false;
  while (!stop || in_flight) {
    // Fill free buffers while there is something to inflate.
    while (!stop && in_flight < kInflateBuffers) {
      InflatePlan plan = plan_inflate(goal, held_.pages(), pages.free_pages_count(), floor_pages_);
      if (plan.pages == 0) {
        // Free memory is down to the floor. The app's caches count as available memory (the
        // host balances guests on that figure), so ask them for the rest: the app's next
        // allocations shrink them, and on_demand_met brings us back with what they freed. Not
        // for a cache under a megabyte (one the app refills page by page would be traded back
        // and forth forever), and not again once a demand found the caches empty.
        constexpr uint64_t kMinDemand = (1ull << 20) >> kBalloonPageShift;
        uint64_t cache = plan.limited ? pages.stats().cache_bytes >> kBalloonPageShift : 0;
        if (cache >= kMinDemand &&
            pages.cache_demand().outcome != mm::CacheDemandOutcome::Exhausted) {
          uint64_t missing = goal - held_.pages();
          asked_caches = true;
          pages.post_cache_demand(floor_pages_ + (missing < cache ? missing : cache), on_demand_met,
                                  this);
          counters_.cache_demands++;
          cache_round_.rounds++;
          stop = true;
          break;
        }
        if (plan.limited) {
          counters_.floor_limited++;
          if (!floor_warned_) {
            kprintf(
                "balloon: target %lu MiB not reachable: holding %lu MiB, keeping %lu MiB "
                "free for the kernel and the app\n",
                mib(target_), mib(held_.pages()), mib(floor_pages_));
            floor_warned_ = true;
          }
        }
        stop = true;
        break;
      }
      BufferToken* token = tokens_.free_inflate();
      if (!token) break;  // cannot happen while in_flight < kInflateBuffers
      const uint16_t slot = tokens_.inflate_slot(*token);
      uint64_t chunk = plan.pages < kPfnsPerBuffer ? plan.pages : kPfnsPerBuffer;
      PageRun* runs = g_scratch.runs;
      size_t nruns = pages.take_pages(chunk, mm::Owner::Balloon, runs, kRunsPerBuffer);
      if (nruns == 0) {
        stop = true;
        break;
      }
      // The pages are the balloon's (held_) before the device sees them: whatever happens to
      // the buffer, they never go back to the allocator behind the device's back.
      uint64_t taken = 0;
      for (size_t i = 0; i < nruns; i++) {
        if (!held_.push(runs[i])) {
          kprintf("balloon: out of memory for the balloon's page list; stopping at %lu MiB\n",
                  mib(held_.pages()));
          pages.give_back(runs + i, nruns - i, false);
          nruns = i;
          stop = true;
          break;
        }
        taken += runs[i].pages;
      }
      PfnCursor cursor(runs, nruns);
      size_t n = cursor.fill(g_buf.inflate_pfns[slot], kPfnsPerBuffer);
      if (n == 0) break;
      virtio::Segment seg{virt_to_phys(g_buf.inflate_pfns[slot]), uint32_t(n * 4)};
      auto r =
          post(*inflate_vq_, std::span<const virtio::Segment>(&seg, 1), {}, *token, slot, taken);
      if (r.is_error()) {
        // Never posted: the pages stay in held_, untold; a deflate hands them back first.
        kprintf("balloon: cannot queue an inflate buffer: %s\n", error_name(r.error()));
        stop = true;
        break;
      }
      done += taken;
      in_flight++;
      inflate_vq_->kick();
      // A new, lower target (config interrupt while we work) ends this inflation early.
      if (config_changed_ && read_target() < actual_ + done) stop = true;
    }
    if (!in_flight) break;
    auto used = wait_used(*inflate_vq_);
    // The device was reset: nothing is in flight any more, and recover() tells the new device
    // about every page in held_, these included.
    if (used.is_error()) break;
    in_flight--;
    set_actual(actual_ + used.value()->pages);
    counters_.inflated_pages += used.value()->pages;
  }
  // An inflation fed by the app's caches comes in many rounds (one per demand met): one line for
  // the whole of it, when it ends.
  if (!cache_round_.active) {
    cache_round_.active = true;
    cache_round_.t0 = t0;
  }
  cache_round_.pages += done;
  if (!asked_caches) log_inflation();
}

void Balloon::log_inflation() {
  if (!cache_round_.active) return;
  uint64_t ms = (timer::now_ns() - cache_round_.t0) / 1000000;
  if (cache_round_.pages && cache_round_.rounds) {
    kprintf(
        "balloon: inflated %lu MiB in %lu ms (%lu rounds shrinking the app's caches), now %lu "
        "MiB\n",
        mib(cache_round_.pages), ms, cache_round_.rounds + 1, mib(actual_));
  } else if (cache_round_.pages) {
    kprintf("balloon: inflated %lu MiB in %lu ms, now %lu MiB\n", mib(cache_round_.pages), ms,
            mib(actual_));
  }
  cache_round_ = {};
}

uint64_t Balloon::deflate(uint64_t want) {
  // A lost device may still read the balloon's buffers: nothing it was lent goes back.
  if (lost_) return 0;
  auto& pages = mm::pages();
  if (gave_up_) {
    // The device is reset and stays so: no buffer names these pages and nobody can be told.
    // Only the OOM path gets here; the app's survival comes before a host that broke its device.
    uint64_t done = 0;
    while (done < want && held_.pages()) {
      size_t nruns = held_.pop(want - done, g_scratch.runs, kRunsPerBuffer);
      if (nruns == 0) break;
      for (size_t i = 0; i < nruns; i++) done += g_scratch.runs[i].pages;
      pages.give_back(g_scratch.runs, nruns, true);
    }
    set_actual(actual_ > done ? actual_ - done : 0);
    counters_.deflated_pages += done;
    if (done)
      kprintf("balloon: gave %lu MiB back to the app without telling the device (given up)\n",
              mib(done));
    return done;
  }
  bool tell_first = dev_.has_feature(kFeatureMustTellHost);
  uint64_t t0 = timer::now_ns(), done = 0;
  PageRun* runs = g_scratch.runs;
  while (done < want && held_.pages()) {
    uint64_t chunk = want - done < kPfnsPerBuffer ? want - done : kPfnsPerBuffer;
    size_t nruns = held_.pop(chunk, runs, kRunsPerBuffer);
    if (nruns == 0) break;
    uint64_t n_pages = 0;
    for (size_t i = 0; i < nruns; i++) n_pages += runs[i].pages;
    PfnCursor cursor(runs, nruns);
    size_t n = cursor.fill(g_buf.deflate_pfns, kPfnsPerBuffer);
    // Without MUST_TELL_HOST the pages may be used before the host hears of them (5.5.6.2).
    if (!tell_first) pages.give_back(runs, nruns, true);
    bool told = false;
    if (n) {
      virtio::Segment seg{virt_to_phys(g_buf.deflate_pfns), uint32_t(n * 4)};
      if (post(*deflate_vq_, std::span<const virtio::Segment>(&seg, 1), {}, tokens_.deflate, 0,
               n_pages)) {
        deflate_vq_->kick();
        told = !wait_used(*deflate_vq_).is_error();
      }
    }
    if (tell_first) {
      if (!told) {
        // 5.5.6.2: with MUST_TELL_HOST the driver must not reuse pages before the host has
        // acknowledged them. The buffer is not in flight any more (never posted, or the device
        // was reset): keep the pages ballooned; recover() tells the new device about them.
        keep_ballooned(runs, nruns);
        kprintf("balloon: the host did not acknowledge a deflate; keeping %lu MiB ballooned\n",
                mib(n_pages));
        break;
      }
      pages.give_back(runs, nruns, true);
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

// Runs popped for a deflate the host did not acknowledge go back into held_. A run held_ has no
// room for (its list needs a page and memory is gone) can only go to the allocator, and may: the
// device has been reset, so no buffer names it, and the host has either discarded it (it reads
// as zero) or never did; give_back files it as content unknown. A lost device gets nothing back.
void Balloon::keep_ballooned(const PageRun* runs, size_t nruns) {
  for (size_t i = 0; i < nruns; i++) {
    if (held_.push(runs[i])) continue;
    if (lost_) {
      counters_.quarantined_pages += runs[i].pages;
      continue;
    }
    mm::pages().give_back(&runs[i], 1, true);
    set_actual(actual_ > runs[i].pages ? actual_ - runs[i].pages : 0);
    counters_.deflated_pages += runs[i].pages;
    kprintf(
        "balloon: no room to keep %lu pages ballooned; returned to the allocator as "
        "content unknown\n",
        runs[i].pages);
  }
}

size_t Balloon::on_oom(size_t needed, void* ctx) {
  auto* b = static_cast<Balloon*>(ctx);
  {
    IrqGuard guard;
    if (b->busy_) return 0;  // the balloon's own work is what is allocating
    b->busy_ = true;
  }
  b->counters_.oom_events++;
  if (b->lost_) {
    // The device may still write hinted ranges and read the balloon's buffers: nothing goes back.
    b->busy_ = false;
    return 0;
  }
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

}  // namespace blimp::balloon
