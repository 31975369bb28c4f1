// The balloon driver itself (drivers/balloon/*.cpp) over a fake virtio-balloon device
// (fake_balloon_device.h), a real PageAllocator over host memory and a fake clock
// (tests/unit/fake_kernel.h): slow, silent and misbehaving hosts on every queue, resets by the host
// and by the driver, the give-up after too many resets, and a device that cannot be reset.
//
// After every step: the allocator's invariants hold; no page named by a buffer the device holds
// is owned by anyone but the balloon (inflate, deflate with MUST_TELL_HOST) or the isolation list
// (reporting, hinting); a buffer's device-readable bytes do not change while the device holds
// it; the allocator's Balloon pages are exactly held_pages(). Once quiet: actual_pages(), the
// config `actual` and the device's own count agree. At the end: a full deflate gives every page
// back (except what a lost device keeps, counted in held_pages() and quarantined_pages).
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "drivers/balloon/balloon.h"
#include "drivers/virtio/mmio_transport.h"
#include "fake_balloon_device.h"
#include "kernel/cmdline.h"
#include "kernel/deferred_work.h"
#include "mm/mm.h"
#include "tests/unit/fake_kernel.h"

namespace blimp::balloon {

// The one seam (balloon.h: friend struct BalloonTestAccess): the Balloon's constructor and
// start() are private, and probe() allows one balloon per boot; the tests build one per test.
struct BalloonTestAccess {
  static Balloon* create(virtio::Device& dev, void* storage) { return new (storage) Balloon(dev); }
  static ErrorOr<void> start(Balloon& b) { return b.start(); }
  static void destroy(Balloon& b) { b.~Balloon(); }
  static bool lost(const Balloon& b) { return b.lost_; }
  static bool gave_up(const Balloon& b) { return b.gave_up_; }
  static uint64_t hinted(const Balloon& b) { return b.hinted_.pages(); }
  static size_t in_flight(Balloon& b) { return b.tokens_.in_flight(); }
  static size_t oom(Balloon& b, size_t pages) { return Balloon::on_oom(pages, &b); }
};

}  // namespace blimp::balloon

namespace blimp::balloon::test {
namespace {

using virtio::feature::bit;
namespace kern = blimp::test::kernel;
using Access = BalloonTestAccess;

constexpr uint64_t kArenaBytes = 64ull << 20;
constexpr uint64_t kSec = 1'000'000'000ull;
constexpr uint64_t kMs = 1'000'000ull;

constexpr uint64_t kAllFeatures = bit(kFeatureMustTellHost) | bit(kFeatureStatsVq) |
                                  bit(kFeatureDeflateOnOom) | bit(kFeatureFreePageHint) |
                                  bit(kFeaturePageReporting) | bit(kFeatureBlimpPageStates) |
                                  bit(kFeatureBlimpShareHints) | bit(virtio::feature::kVersion1) |
                                  bit(virtio::feature::kIndirectDesc);

// Guest RAM: one arena below 2 GiB (the balloon speaks 32-bit PFNs), one allocator
// (mm::pages() is a global) for the whole process.
uint64_t g_arena = 0;
mm::PageAllocator& allocator() {
  if (!g_arena) {
    void* p = mmap(nullptr, kArenaBytes + (4ull << 20), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (p == MAP_FAILED) abort();
    g_arena = (reinterpret_cast<uint64_t>(p) + (4ull << 20) - 1) & ~((4ull << 20) - 1);
    std::memset(reinterpret_cast<void*>(g_arena), 0xa5, kArenaBytes);
    MemoryRange r{g_arena, kArenaBytes};
    mm::init(&r, 1, 0);
  }
  return mm::pages();
}

uint64_t count_owned(mm::Owner want) {
  uint64_t n = 0;
  for (uint64_t a = g_arena; a < g_arena + kArenaBytes; a += kPage)
    n += mm::pages().owner_of(a) == want;
  return n;
}

struct Options {
  uint64_t features = kAllFeatures;
  std::string cmdline = "balloon.floor=8M balloon.report=off";
};

// Memory the guest used and freed: free blocks the host backs, so "unreported" (memory never
// touched since boot counts as unbacked and is never reported).
void dirty(unsigned blocks_2m) {
  std::vector<PhysAddr> v;
  for (unsigned i = 0; i < blocks_2m; ++i) {
    auto r = mm::pages().alloc_pages(9, mm::Owner::App, mm::AllocFlags(mm::kAllocNoReclaim));
    if (r.is_error()) break;
    std::memset(reinterpret_cast<void*>(r.value()), 0x11, 512 * kPage);
    v.push_back(r.value());
  }
  for (PhysAddr a : v) mm::pages().free_pages(a, 9);
}

class balloon_driver : public ::testing::Test {
 protected:
  void SetUp() override { SetUpWith(Options{}); }

  void SetUpWith(const Options& o) {
    allocator();
    kern::reset();
    // The driver's log is searched by the tests; on stderr only with BALLOON_TEST_VERBOSE=1.
    const char* verbose = std::getenv("BALLOON_TEST_VERBOSE");
    kern::set_echo(verbose && *verbose == '1');
    cmdline_ = o.cmdline;
    cmdline::init(cmdline_.c_str());
    dirty(12);  // 24 MiB the reporting and hinting tests find
    start_free_ = mm::pages().free_pages_count();
    start_kernel_ = count_owned(mm::Owner::Kernel);
    fake_ = std::make_unique<FakeBalloonDevice>(o.features);
    transport_ = std::make_unique<virtio::MmioTransport>(*fake_, 0xfeb00e00, 12);
    ASSERT_FALSE(transport_->init().is_error());
    dev_ = std::make_unique<virtio::Device>(*transport_, dma_);
    kern::set_poll_hook(&balloon_driver::poll_hook, this);
    b_ = Access::create(*dev_, storage_);
    ASSERT_FALSE(Access::start(*b_).is_error());
    started_ = true;
    set_up_ = true;
  }

  void TearDown() override {
    if (!set_up_) return;
    kern::set_poll_hook(nullptr, nullptr);
    // The allocator's hooks point at the balloon: unhook them before it goes (returning the
    // pages below would otherwise call its report hook on a destroyed object).
    auto& pa = mm::pages();
    pa.set_oom_handler(nullptr, nullptr);
    pa.set_report_hook(nullptr, nullptr, 0, 0);
    pa.set_reporting_reserve(0);
    pa.forget_cache_demand();
    // Whatever a lost or given-up balloon kept goes back by hand (a reboot, for the next test).
    Access::destroy(*b_);
    for (uint64_t a = g_arena; a < g_arena + kArenaBytes; a += kPage) {
      mm::PageRun r{a, 1};
      mm::Owner o = mm::pages().owner_of(a);
      if (o == mm::Owner::Balloon) mm::pages().give_back(&r, 1, false);
      if (o == mm::Owner::Isolated) mm::pages().return_isolated(&r, 1, false);
    }
    dev_.reset();
    kern::reset();
    EXPECT_TRUE(pa.check_invariants());
  }

  static void poll_hook(void* ctx) {
    auto* t = static_cast<balloon_driver*>(ctx);
    for (size_t i = 0; i < t->events_.size();) {
      if (t->events_[i].first <= kern::now()) {
        auto fn = t->events_[i].second;
        t->events_.erase(t->events_.begin() + long(i));
        fn();
      } else {
        ++i;
      }
    }
    t->fake_->pump(kern::now());
    // The ownership rule while the driver waits, every 100 ms of fake time.
    if (++t->polls_ % 100 == 0) t->fake_->check_held("while the driver waited");
    if (t->started_ && t->fake_->irq_pending()) t->dev_->irq_shared();
  }

  // Runs the interrupt handlers and the work until nothing is left (the clock moves only while
  // the driver reads it).
  void settle() {
    for (int i = 0; i < 1000; ++i) {
      kern::poll();
      work::run_pending();
      kern::poll();  // the device takes what the work posted
      if (!kern::work_pending() && !fake_->irq_pending()) return;
    }
    ADD_FAILURE() << "the balloon's work never settles";
  }
  // Lets `ns` of fake time pass, 1 ms at a time, with timers, interrupts and work running.
  void advance(uint64_t ns) {
    const uint64_t end = kern::now() + ns;
    while (kern::now() < end) {
      kern::set_now(kern::now() + kMs);
      settle();
    }
  }
  void target(uint32_t pages) {
    fake_->set_target(pages);
    fake_->raise_config();
    settle();
  }
  void at(uint64_t delay, std::function<void()> fn) {
    events_.push_back({kern::now() + delay, std::move(fn)});
  }

  // The per-step checks (see the top of the file).
  void check_step(const char* step) {
    SCOPED_TRACE(step);
    EXPECT_TRUE(mm::pages().check_invariants());
    fake_->check_held(step);
    for (auto& v : fake_->violations) ADD_FAILURE() << "ownership rule: " << v;
    fake_->violations.clear();
    EXPECT_EQ(count_owned(mm::Owner::Balloon), b_->held_pages());
  }
  // Quiet (nothing of the balloon's in flight): the driver, the config and the device agree.
  void check_settled(const char* step) {
    check_step(step);
    SCOPED_TRACE(step);
    EXPECT_EQ(fake_->held(QueueKind::Inflate), 0u);
    EXPECT_EQ(fake_->held(QueueKind::Deflate), 0u);
    EXPECT_EQ(b_->actual_pages(), fake_->config_actual());
    EXPECT_EQ(b_->actual_pages(), fake_->balloon_pfns.size());
    EXPECT_EQ(b_->held_pages(), b_->actual_pages());
    for (uint64_t pfn : fake_->balloon_pfns)
      if (mm::pages().owner_of(pfn * kPage) != mm::Owner::Balloon) {
        ADD_FAILURE() << "pfn " << pfn << " is ballooned on the host but not the balloon's";
        break;
      }
  }
  // A full deflate hands every page back.
  void deflate_all_and_check_leaks() {
    target(0);
    check_settled("after the full deflate");
    EXPECT_EQ(b_->held_pages(), 0u);
    EXPECT_EQ(mm::pages().free_pages_count(), start_free_);
  }
  void expect_log(const char* s) {
    EXPECT_TRUE(kern::log_contains(s)) << "log lacks \"" << s << "\":\n" << kern::log();
  }
  const BalloonCounters& c() { return b_->counters(); }
  // A balloon that stopped (lost device, gave up) keeps what it holds: every page is free, held
  // (the balloon's pages, plus the pages of its own run list) or quarantined.
  void expect_accounted() {
    EXPECT_EQ(mm::pages().free_pages_count() + b_->held_pages() + c().quarantined_pages +
                  (count_owned(mm::Owner::Kernel) - start_kernel_),
              start_free_);
  }

  std::string cmdline_;
  uint64_t start_free_ = 0;
  uint64_t start_kernel_ = 0;  // pages the balloon's own lists take (RunSet storage) come on top
  std::unique_ptr<FakeBalloonDevice> fake_;
  std::unique_ptr<virtio::MmioTransport> transport_;
  virtio::test::HostDma dma_;
  std::unique_ptr<virtio::Device> dev_;
  alignas(Balloon) unsigned char storage_[sizeof(Balloon)];
  Balloon* b_ = nullptr;
  bool started_ = false, set_up_ = false;
  uint64_t polls_ = 0;
  std::vector<std::pair<uint64_t, std::function<void()>>> events_;
};

// ---- The baseline: a host that answers at once
// ---------------------------------------------------

TEST_F(balloon_driver, InflateAndDeflateRoundTrip) {
  settle();
  check_settled("after start");
  target(10000);  // three inflate buffers
  check_settled("after inflating");
  EXPECT_EQ(b_->actual_pages(), 10000u);
  EXPECT_EQ(c().inflated_pages, 10000u);
  target(3000);
  check_settled("after a partial deflate");
  EXPECT_EQ(b_->actual_pages(), 3000u);
  deflate_all_and_check_leaks();
  EXPECT_EQ(c().driver_resets + c().device_resets + c().slow_waits, 0u);
}

class balloon_driver_no_tell : public balloon_driver {
  void SetUp() override {
    Options o;
    o.features &= ~bit(kFeatureMustTellHost);
    SetUpWith(o);
  }
};

TEST_F(balloon_driver_no_tell, InflateAndDeflateRoundTrip) {
  settle();
  target(9000);
  check_settled("after inflating");
  target(1000);
  check_settled("after a partial deflate");
  deflate_all_and_check_leaks();
}

// ---- The app's caches: a demand, its outcome, and no second demand on empty caches
// ---------------

// An app cache; `pinned`: it counts its pages but cannot free them (everything in use).
struct PinnableCache : mm::Shrinker {
  bool fill(size_t n) {
    for (size_t i = 0; i < n; ++i) {
      auto a = mm::pages().alloc_pages(0, mm::Owner::App, mm::AllocFlags(mm::kAllocNoReclaim));
      if (a.is_error()) return false;
      held.push_back(a.value());
    }
    return true;
  }
  size_t count_objects() override { return held.size(); }
  size_t scan_objects(size_t n) override {
    ++scans;
    size_t freed = 0;
    for (; !pinned && freed < n && !held.empty(); ++freed) {
      mm::pages().free_pages(held.back(), 0);
      held.pop_back();
    }
    return freed;
  }
  void empty() {
    for (PhysAddr a : held) mm::pages().free_pages(a, 0);
    held.clear();
  }
  std::vector<PhysAddr> held;
  bool pinned = true;
  unsigned scans = 0;
};

TEST_F(balloon_driver, CacheDemandExhaustedIsNotMadeAgainUntilANewTarget) {
  settle();
  auto& pa = mm::pages();
  PinnableCache cache;
  ASSERT_TRUE(cache.fill(2048));  // 8 MiB
  pa.register_shrinker(&cache);
  std::vector<PhysAddr> app;
  auto app_alloc = [&] {
    auto a = pa.alloc_pages(0, mm::Owner::App);
    ASSERT_FALSE(a.is_error());
    app.push_back(a.value());
    settle();
  };
  // More than free memory above the floor: the balloon inflates to the floor, then asks the caches.
  const uint32_t first = uint32_t(pa.free_pages_count() - 2048 + 1000);
  target(first);
  check_settled("inflated to the floor");
  EXPECT_EQ(c().cache_demands, 1u);
  mm::CacheDemand d = pa.cache_demand();
  EXPECT_EQ(d.outcome, mm::CacheDemandOutcome::Pending);
  EXPECT_GT(d.asked_pages, pa.free_pages_count());
  // The app allocates: the pinned cache gives nothing, the demand is dropped, the balloon told.
  app_alloc();
  EXPECT_EQ(cache.scans, 1u);
  d = pa.cache_demand();
  EXPECT_EQ(d.outcome, mm::CacheDemandOutcome::Exhausted);
  EXPECT_EQ(d.given_pages, 0u);
  // Not asked again for this target: the app's allocations no longer shrink anything.
  app_alloc();
  app_alloc();
  EXPECT_EQ(cache.scans, 1u);
  EXPECT_EQ(c().cache_demands, 1u);
  EXPECT_LT(b_->actual_pages(), first);
  check_settled("held at the floor");
  // A new target asks again, and a cache that can give feeds the inflation.
  cache.pinned = false;
  target(first + 100);
  EXPECT_EQ(c().cache_demands, 2u);
  EXPECT_EQ(pa.cache_demand().outcome, mm::CacheDemandOutcome::Pending);
  const uint64_t before = b_->actual_pages();
  app_alloc();
  EXPECT_GT(cache.scans, 1u);
  EXPECT_GT(pa.cache_demand().given_pages, 0u);
  EXPECT_GT(b_->actual_pages(), before);
  check_settled("fed by the cache");
  pa.unregister_shrinker(&cache);
  pa.forget_cache_demand();
  cache.empty();
  for (PhysAddr a : app) pa.free_pages(a, 0);
  deflate_all_and_check_leaks();
}

// ---- Late completions: past balloon.timeout_ms (5 s), before balloon.reset_ms (20 s)
// -------------

TEST_F(balloon_driver, LateInflateIsWaitedFor) {
  settle();
  fake_->script(QueueKind::Inflate, {Behaviour::after(7 * kSec)});
  target(6000);
  check_settled("after a late inflate");
  EXPECT_EQ(b_->actual_pages(), 6000u);
  EXPECT_EQ(c().slow_waits, 1u);
  EXPECT_EQ(c().driver_resets, 0u);
  expect_log("still waiting");
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver, LateDeflateWithMustTellHostIsWaitedFor) {
  settle();
  target(6000);
  fake_->script(QueueKind::Deflate, {Behaviour::after(7 * kSec)});
  target(1000);
  check_settled("after a late deflate");
  EXPECT_EQ(b_->actual_pages(), 1000u);
  EXPECT_EQ(c().slow_waits, 1u);
  EXPECT_EQ(c().driver_resets, 0u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver_no_tell, LateDeflateIsWaitedFor) {
  settle();
  target(6000);
  fake_->script(QueueKind::Deflate, {Behaviour::after(7 * kSec)});
  target(1000);
  check_settled("after a late deflate");
  EXPECT_EQ(c().slow_waits, 1u);
  deflate_all_and_check_leaks();
}

// ---- Buffers that never come back: the driver resets at balloon.reset_ms
// -------------------------

TEST_F(balloon_driver, SilentInflateResetsAndRetellsHeldPages) {
  settle();
  fake_->script(QueueKind::Inflate, {Behaviour::now(), Behaviour::never()});
  target(8000);
  check_settled("after the reset and recovery");
  EXPECT_EQ(c().driver_resets, 1u);
  EXPECT_EQ(c().device_resets, 1u);
  EXPECT_EQ(b_->actual_pages(), 8000u);  // the target is reached after recovery
  expect_log("balloon.reset_ms");
  expect_log("re-inflated");
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver, SilentDeflateWithMustTellHostKeepsPagesBallooned) {
  settle();
  target(8000);
  fake_->script(QueueKind::Deflate, {Behaviour::never()});
  target(2000);
  check_settled("after the reset and recovery");
  EXPECT_EQ(c().driver_resets, 1u);
  expect_log("did not acknowledge a deflate");
  EXPECT_EQ(b_->actual_pages(), 2000u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver_no_tell, SilentDeflateResetsAndRecovers) {
  settle();
  target(8000);
  fake_->script(QueueKind::Deflate, {Behaviour::never()});
  target(2000);
  check_settled("after the reset and recovery");
  EXPECT_EQ(c().driver_resets, 1u);
  EXPECT_EQ(b_->actual_pages(), 2000u);
  deflate_all_and_check_leaks();
}

// A host that does not cancel work on reset discards the pages of an inflate buffer after the
// driver reset the device and went on: they must still be the balloon's (or at least free), never
// the app's. The app takes all the free memory meanwhile, and checks its content afterwards.
TEST_F(balloon_driver, StaleInflateAfterResetHitsNoPageInUse) {
  settle();
  fake_->script(QueueKind::Inflate, {Behaviour::stale(5 * kSec)});
  target(4000);
  check_settled("after the reset and recovery");
  EXPECT_EQ(c().driver_resets, 1u);
  ASSERT_EQ(fake_->stale_pending(), 1u);
  std::vector<PhysAddr> app;
  while (mm::pages().free_pages_count() > 0) {
    auto r = mm::pages().alloc_pages(0, mm::Owner::App, mm::AllocFlags(mm::kAllocNoReclaim));
    if (r.is_error()) break;
    std::memset(reinterpret_cast<void*>(r.value()), 0x3c, kPage);
    app.push_back(r.value());
  }
  advance(6 * kSec);
  EXPECT_EQ(fake_->stale_done, 1u);
  check_step("after the stale discard");
  for (PhysAddr a : app) {
    auto* p = reinterpret_cast<const uint8_t*>(a);
    if (p[0] != 0x3c || p[kPage - 1] != 0x3c) {
      ADD_FAILURE() << "the app's page " << a << " was discarded by a stale inflate";
      break;
    }
  }
  for (PhysAddr a : app) mm::pages().free_pages(a, 0);
  deflate_all_and_check_leaks();
}

// The same for a deflate with MUST_TELL_HOST: the pages were kept ballooned across the reset.
TEST_F(balloon_driver, StaleDeflateAfterResetHitsNoPageInUse) {
  settle();
  target(8000);
  fake_->script(QueueKind::Deflate, {Behaviour::stale(3 * kSec)});
  target(2000);
  check_settled("after the reset and recovery");
  EXPECT_EQ(c().driver_resets, 1u);
  advance(4 * kSec);
  EXPECT_EQ(fake_->stale_done, 1u);
  check_settled("after the stale deflate");
  deflate_all_and_check_leaks();
}

// ---- Stats: the device holds the buffer as long as it likes
// ---------------------------------------

TEST_F(balloon_driver, StatsHeldForeverBlocksNothing) {
  settle();
  EXPECT_EQ(fake_->held(QueueKind::Stats), 1u) << fake_->describe();
  EXPECT_EQ(c().stats_answers, 1u);
  target(5000);
  advance(30 * kSec);
  check_settled("with the stats buffer held for 30 s");
  EXPECT_EQ(c().driver_resets, 0u);
  ASSERT_TRUE(fake_->request_stats());
  settle();
  EXPECT_EQ(c().stats_answers, 2u);
  EXPECT_EQ(fake_->held(QueueKind::Stats), 1u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver, BogusStatsCompletionResets) {
  settle();
  target(5000);
  fake_->script(QueueKind::Stats, {Behaviour::bogus_id()});
  ASSERT_TRUE(fake_->request_stats());  // returns the first buffer; the next one is bogus
  settle();
  ASSERT_TRUE(fake_->request_stats());
  settle();
  check_settled("after the reset");
  EXPECT_EQ(c().driver_resets, 1u);
  EXPECT_EQ(c().device_resets, 1u);
  EXPECT_EQ(b_->actual_pages(), 5000u);
  EXPECT_EQ(fake_->held(QueueKind::Stats), 1u);  // posted again on the new ring
  deflate_all_and_check_leaks();
}

// ---- Reporting
// ---------------------------------------------------------------------------------------

class balloon_driver_reporting : public balloon_driver {
  void SetUp() override {
    Options o;
    o.cmdline = "balloon.floor=8M";
    SetUpWith(o);
  }
};

TEST_F(balloon_driver_reporting, LateReportIsWaitedFor) {
  fake_->script(QueueKind::Report, {Behaviour::after(7 * kSec)});
  settle();
  check_settled("after a late report");
  EXPECT_GT(c().reported_pages, 0u);
  EXPECT_EQ(c().reported_pages, fake_->reported_pages);
  EXPECT_EQ(c().slow_waits, 1u);
  EXPECT_EQ(count_owned(mm::Owner::Isolated), 0u);
  EXPECT_EQ(c().driver_resets, 0u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver_reporting, SilentReportResetsAndReturnsTheBlocks) {
  fake_->script(QueueKind::Report, {Behaviour::never()});
  settle();
  check_settled("after the reset");
  EXPECT_EQ(c().driver_resets, 1u);
  EXPECT_EQ(c().device_resets, 1u);
  EXPECT_EQ(count_owned(mm::Owner::Isolated), 0u);
  EXPECT_GT(c().reported_pages, 0u);  // reported again to the new device
  target(4000);
  check_settled("after inflating");
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver_reporting, StaleReportAfterResetTouchesNoPageInUse) {
  fake_->script(QueueKind::Report, {Behaviour::stale(2 * kSec)});
  settle();
  EXPECT_EQ(c().driver_resets, 1u);
  advance(3 * kSec);
  EXPECT_EQ(fake_->stale_done, 1u);
  check_settled("after the stale discard");
  deflate_all_and_check_leaks();
}

// ---- Free page hinting
// ---------------------------------------------------------------------------------

TEST_F(balloon_driver, HintingLateCommandAndLateRanges) {
  settle();
  fake_->script(QueueKind::Hint, {Behaviour::after(6 * kSec), Behaviour::after(6 * kSec)});
  fake_->set_hint_cmd(7);
  fake_->raise_config();
  settle();
  check_step("after hinting");
  ASSERT_GE(fake_->hint_words.size(), 2u);
  EXPECT_EQ(fake_->hint_words.front(), 7u);
  EXPECT_EQ(fake_->hint_words.back(), kCmdIdStop);
  EXPECT_GT(c().hinted_pages, 0u);
  EXPECT_EQ(Access::hinted(*b_), c().hinted_pages);
  EXPECT_EQ(count_owned(mm::Owner::Isolated), c().hinted_pages);
  EXPECT_EQ(c().slow_waits, 2u);
  fake_->set_hint_cmd(kCmdIdDone);
  fake_->raise_config();
  settle();
  EXPECT_EQ(Access::hinted(*b_), 0u);
  EXPECT_EQ(count_owned(mm::Owner::Isolated), 0u);
  deflate_all_and_check_leaks();
}

// A VM restored from a snapshot taken mid-hint: the device's hint thread had set NO_NOTIFY and
// polled; on the restored side nothing polls, so the driver's kicks are suppressed and the ranges
// it posts are never seen. Notifying again after a second gets them taken, without a reset.
TEST_F(balloon_driver, HintQueueThatStoppedPollingIsNotifiedAgainNotReset) {
  settle();
  fake_->stop_polling(QueueKind::Hint, /*after=*/2);  // the command word and one range
  fake_->set_hint_cmd(13);
  fake_->raise_config();
  settle();
  check_step("after hinting to a queue that stopped polling");
  EXPECT_GE(fake_->wakeups, 1u);
  EXPECT_GE(c().renotified, 1u);
  EXPECT_EQ(c().driver_resets, 0u);
  EXPECT_EQ(c().slow_waits, 0u);
  EXPECT_EQ(fake_->hint_words.back(), kCmdIdStop);
  expect_log("notified again");
  fake_->set_hint_cmd(kCmdIdDone);
  fake_->raise_config();
  settle();
  EXPECT_EQ(count_owned(mm::Owner::Isolated), 0u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver, SilentHintRangeResetsAndReturnsHintedBlocks) {
  settle();
  fake_->script(QueueKind::Hint, {Behaviour::now(), Behaviour::now(), Behaviour::never()});
  fake_->set_hint_cmd(9);
  fake_->raise_config();
  settle();
  check_step("after the reset");
  EXPECT_EQ(c().driver_resets, 1u);
  EXPECT_EQ(c().device_resets, 1u);
  // recover() returned the blocks hinted to the old device; the command id still in the config
  // is taken as new and hinted again to the new device (the fake completes it this time).
  EXPECT_EQ(std::count(fake_->hint_words.begin(), fake_->hint_words.end(), 9u), 2);
  EXPECT_EQ(count_owned(mm::Owner::Isolated), Access::hinted(*b_));
  fake_->set_hint_cmd(kCmdIdDone);
  fake_->raise_config();
  settle();
  EXPECT_EQ(Access::hinted(*b_), 0u);
  EXPECT_EQ(count_owned(mm::Owner::Isolated), 0u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver, SilentHintCommandResets) {
  settle();
  fake_->script(QueueKind::Hint, {Behaviour::never()});
  fake_->set_hint_cmd(11);
  fake_->raise_config();
  settle();
  check_step("after the reset");
  EXPECT_EQ(c().driver_resets, 1u);
  EXPECT_EQ(std::count(fake_->hint_words.begin(), fake_->hint_words.end(), 11u), 1);  // new device
  EXPECT_EQ(count_owned(mm::Owner::Isolated), Access::hinted(*b_));
  fake_->set_hint_cmd(kCmdIdDone);
  fake_->raise_config();
  settle();
  EXPECT_EQ(count_owned(mm::Owner::Isolated), 0u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver, StaleHintRangeAfterResetTouchesNoPageInUse) {
  settle();
  fake_->script(QueueKind::Hint, {Behaviour::now(), Behaviour::stale(3 * kSec)});
  fake_->set_hint_cmd(15);
  fake_->raise_config();
  settle();
  EXPECT_EQ(c().driver_resets, 1u);
  advance(4 * kSec);
  EXPECT_EQ(fake_->stale_done, 1u);
  check_step("after the stale hint");
  fake_->set_hint_cmd(kCmdIdDone);
  fake_->raise_config();
  settle();
  deflate_all_and_check_leaks();
}

// ---- The Blimp extension queue
// -----------------------------------------------------------------------

BlimpUnsealEntry g_entry{0x1234, 1, 0};

TEST_F(balloon_driver, BlimpqLateAnswerIsWaitedFor) {
  settle();
  fake_->script(QueueKind::Blimp, {Behaviour::after(8 * kSec)});
  auto r = b_->blimp_request(kBlimpUnseal, &g_entry, 1, sizeof g_entry);
  ASSERT_FALSE(r.is_error());
  EXPECT_EQ(r.value().status, kBlimpOk);
  EXPECT_EQ(r.value().accepted, 1u);
  EXPECT_EQ(c().slow_waits, 1u);
  EXPECT_EQ(c().driver_resets, 0u);
  check_step("after the answer");
}

TEST_F(balloon_driver, BlimpqSilenceShortAndOverlongAnswersReset) {
  settle();
  target(3000);
  fake_->script(QueueKind::Blimp,
                {Behaviour::never(), Behaviour::short_len(), Behaviour::long_len()});
  for (int i = 0; i < 3; ++i) {
    auto r = b_->blimp_request(kBlimpUnseal, &g_entry, 1, sizeof g_entry);
    ASSERT_TRUE(r.is_error()) << i;
    EXPECT_EQ(r.error(), Error::DeviceError) << i;
    settle();  // recovery
    check_settled("after the reset");
  }
  EXPECT_EQ(c().driver_resets, 3u);
  EXPECT_EQ(c().device_resets, 3u);
  auto r = b_->blimp_request(kBlimpUnseal, &g_entry, 1, sizeof g_entry);
  ASSERT_FALSE(r.is_error());
  EXPECT_EQ(b_->actual_pages(), 3000u);
  deflate_all_and_check_leaks();
}

// ---- Broken queues
// ---------------------------------------------------------------------------------------

TEST_F(balloon_driver, BogusUsedIdOnInflateResets) {
  settle();
  fake_->script(QueueKind::Inflate, {Behaviour::bogus_id()});
  target(6000);
  check_settled("after the reset");
  EXPECT_EQ(c().driver_resets, 1u);
  EXPECT_EQ(b_->actual_pages(), 6000u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver_reporting, OverlongUsedLenOnReportResets) {
  fake_->script(QueueKind::Report, {Behaviour::long_len()});
  settle();
  check_settled("after the reset");
  EXPECT_EQ(c().driver_resets, 1u);
  EXPECT_EQ(count_owned(mm::Owner::Isolated), 0u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver, InflateCompletionOnTheDeflateQueueResets) {
  settle();
  fake_->script(QueueKind::Inflate, {Behaviour::wrong_queue(QueueKind::Deflate)});
  target(6000);
  check_settled("after the reset");
  EXPECT_GE(c().driver_resets, 1u);
  EXPECT_EQ(b_->actual_pages(), 6000u);
  deflate_all_and_check_leaks();
}

// ---- Resets by the host
// ----------------------------------------------------------------------------------

TEST_F(balloon_driver, HostResetMidInflate) {
  settle();
  fake_->script(QueueKind::Inflate, {Behaviour::now(), Behaviour::never()});
  at(2 * kSec, [this] { fake_->host_reset(); });
  target(8000);
  check_settled("after the recovery");
  EXPECT_EQ(c().device_resets, 1u);
  EXPECT_EQ(b_->actual_pages(), 8000u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver, NeedsResetMidDeflate) {
  settle();
  target(8000);
  fake_->script(QueueKind::Deflate, {Behaviour::never()});
  at(1 * kSec, [this] { fake_->needs_reset(); });
  target(1000);
  check_settled("after the recovery");
  EXPECT_EQ(c().device_resets, 1u);
  EXPECT_EQ(b_->actual_pages(), 1000u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver, HostResetWhileIdleIsFoundByTheHealthTimer) {
  settle();
  target(5000);
  fake_->host_reset();
  advance(2 * kSec);
  check_settled("after the recovery");
  EXPECT_EQ(c().device_resets, 1u);
  EXPECT_EQ(b_->actual_pages(), 5000u);
  deflate_all_and_check_leaks();
}

// ---- Too many resets: the balloon gives up, keeping what it holds
// ---------------------------------------

TEST_F(balloon_driver, GivesUpAfterFiveResetsInAMinute) {
  settle();
  target(3000);
  fake_->set_default(QueueKind::Inflate, Behaviour::bogus_id());
  target(6000);
  advance(5 * kSec);
  check_step("after giving up");
  EXPECT_TRUE(Access::gave_up(*b_));
  EXPECT_EQ(c().device_resets, 5u);
  expect_log("giving up");
  EXPECT_EQ(b_->held_pages(), 6000u);  // taken before the first reset, retold after each
  // retell_held() counts every held page as ballooned even when the retell failed, so `actual`
  // reads 6000 although the (reset, given-up) device acknowledged none of them.
  EXPECT_EQ(fake_->balloon_pfns.size(), 0u);
  target(0);  // a new target does nothing for a balloon that gave up
  EXPECT_EQ(b_->held_pages(), 6000u);
  // but memory pressure does: the device is reset for good, so no buffer names these pages
  EXPECT_GE(Access::oom(*b_, 1000), 1000u);
  EXPECT_LT(b_->held_pages(), 6000u);
  expect_log("without telling the device (given up)");
  check_step("after an OOM deflate of a balloon that gave up");
  expect_accounted();
}

TEST_F(balloon_driver, ResetsSpreadOverMinutesDoNotGiveUp) {
  settle();
  target(3000);
  for (int i = 0; i < 7; ++i) {
    fake_->host_reset();
    advance(15 * kSec);
    check_settled("after a recovery");
  }
  EXPECT_FALSE(Access::gave_up(*b_));
  EXPECT_EQ(c().device_resets, 7u);
  deflate_all_and_check_leaks();
}

// ---- A device that cannot be reset: lost, its buffers quarantined
// ---------------------------------------

TEST_F(balloon_driver, LostDeviceKeepsInflatedPagesForGood) {
  settle();
  fake_->script(QueueKind::Inflate, {Behaviour::now(), Behaviour::never()});
  fake_->reset_stuck = true;
  target(8000);
  check_step("after the failed reset");
  EXPECT_TRUE(Access::lost(*b_));
  EXPECT_EQ(fake_->held(QueueKind::Inflate), 1u);
  // The lost device finally acts on what it holds: every page is still the balloon's.
  fake_->finish_held();
  advance(1 * kSec);
  check_step("after the lost device acted");
  target(0);
  EXPECT_EQ(b_->held_pages(), 8000u);  // nothing the device was lent goes back
  EXPECT_EQ(BalloonTestAccess::oom(*b_, 100), 0u);
  expect_accounted();
}

TEST_F(balloon_driver_reporting, HostResetMidReport) {
  fake_->script(QueueKind::Report, {Behaviour::never()});
  at(1 * kSec, [this] { fake_->host_reset(); });
  settle();
  check_settled("after the recovery");
  EXPECT_EQ(c().device_resets, 1u);
  EXPECT_EQ(count_owned(mm::Owner::Isolated), 0u);
  EXPECT_GT(c().reported_pages, 0u);
  deflate_all_and_check_leaks();
}

TEST_F(balloon_driver_reporting, LostDeviceQuarantinesTheReport) {
  fake_->script(QueueKind::Report, {Behaviour::never()});
  fake_->reset_stuck = true;
  settle();
  check_step("after the failed reset");
  EXPECT_TRUE(Access::lost(*b_));
  EXPECT_GT(c().quarantined_pages, 0u);
  EXPECT_EQ(count_owned(mm::Owner::Isolated), c().quarantined_pages);
  fake_->finish_held();
  advance(1 * kSec);
  check_step("after the lost device acted");
  expect_accounted();
}

TEST_F(balloon_driver, LostDeviceQuarantinesHintedBlocks) {
  settle();
  fake_->script(QueueKind::Hint, {Behaviour::now(), Behaviour::now(), Behaviour::never()});
  fake_->reset_stuck = true;
  fake_->set_hint_cmd(13);
  fake_->raise_config();
  settle();
  check_step("after the failed reset");
  EXPECT_TRUE(Access::lost(*b_));
  EXPECT_EQ(BalloonTestAccess::oom(*b_, 100), 0u);  // hinted blocks stay with the device
  EXPECT_EQ(count_owned(mm::Owner::Isolated), Access::hinted(*b_));
  expect_accounted();
}

TEST_F(balloon_driver, LostDeviceBlimpqTimesOut) {
  settle();
  fake_->script(QueueKind::Blimp, {Behaviour::never()});
  fake_->reset_stuck = true;
  auto r = b_->blimp_request(kBlimpUnseal, &g_entry, 1, sizeof g_entry);
  ASSERT_TRUE(r.is_error());
  EXPECT_EQ(r.error(), Error::Timeout);
  EXPECT_TRUE(Access::lost(*b_));
  check_step("after the failed reset");
}

// A lost device may still act on everything it was given, registrations included: a later
// request is not sent to it, and its answer must not be the one that means "reset, forgot all".
TEST_F(balloon_driver, LostDeviceRefusesLaterBlimpRequestsAsTimeout) {
  settle();
  fake_->script(QueueKind::Blimp, {Behaviour::never()});
  fake_->reset_stuck = true;
  ASSERT_TRUE(b_->blimp_request(kBlimpUnseal, &g_entry, 1, sizeof g_entry).is_error());
  ASSERT_TRUE(Access::lost(*b_));
  const size_t held = fake_->held(QueueKind::Blimp);
  auto r = b_->blimp_request(kBlimpUnseal, &g_entry, 1, sizeof g_entry);
  ASSERT_TRUE(r.is_error());
  EXPECT_EQ(r.error(), Error::Timeout);
  EXPECT_EQ(fake_->held(QueueKind::Blimp), held);  // nothing more lent to the lost device
  check_step("after the request to the lost device");
}

// ---- Deflate on OOM with a slow host
// ---------------------------------------------------------------------

TEST_F(balloon_driver, OomDeflateWaitsForALateHost) {
  settle();
  target(8000);
  fake_->script(QueueKind::Deflate, {Behaviour::after(6 * kSec)});
  size_t got = BalloonTestAccess::oom(*b_, 100);
  EXPECT_EQ(got, 4096u);  // at least 16 MiB
  EXPECT_EQ(c().slow_waits, 1u);
  check_settled("after the OOM deflate");
  deflate_all_and_check_leaks();
}

}  // namespace
}  // namespace blimp::balloon::test
