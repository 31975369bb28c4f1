// The page allocator: a buddy allocator over the usable RAM ranges, built to cooperate with the
// hypervisor. The balloon, free page reporting and the page-state array are clients of it, not
// bolt-ons: they take and return pages through the same free lists the app allocates from.
//
// # Structure
//
// Blocks of 2^order pages (order 0..kMaxOrder), naturally aligned in physical memory. Each page has
// a PageInfo (mm/page.h) in an array carved out of managed RAM at init; a block is described by
// its head page. Free lists are doubly linked through PageInfo (never through the free memory,
// which the host may have discarded). Per order there are two lists:
//
//   unreported list:  head = most recently freed (warm) ... tail = cold (boot memory, blocks that
//                     came back from the balloon, isolated blocks returned unreported)
//   reported list:    blocks the host has discarded (free page reporting); cold, and zero unless
//                     discarded content is unknown (set_discarded_content_unknown)
//
// # Warm/cold policy
//
// The host only saves memory on pages it backs, and it backs exactly the pages the guest touched.
// Every pick makes two passes over the orders, from the order asked for up: the first accepts only
// blocks of the temperature the policy wants (splitting a bigger block of the right temperature
// beats taking a smaller one of the wrong temperature), the second takes anything, smallest order
// first.
//  - The app (alloc_pages/alloc_run; kAllocPreferWarm is the default): pass 1 takes the smallest
//    warm block, from the head of the unreported list, i.e. the most recently freed memory, which
//    the host backs; so the app does not make the host back fresh memory while backed free memory
//    sits idle. Pass 2: unreported (cold) before reported within an order.
//  - kAllocPreferCold: pass 1 takes reported blocks (not backed, and zero: good for big zeroed
//    buffers); pass 2 the cold end of the unreported list.
//  - The balloon (take_pages): largest blocks first (whole 4 MiB blocks make long discard runs and
//    leave the app's small blocks alone); pass 1 takes cold unreported (backed) blocks of any
//    order, pass 2 warm unreported ones and only then reported (not backed) ones.
//    Backed-before-unbacked is the point: inflating memory the host never backed (the guest's
//    untouched boot memory, filed as reported by mm::init) or already discarded gives the host
//    nothing back.
//  - Free page reporting isolates unreported blocks of at least the requested order from the cold
//    end, so the blocks the app is about to reuse are the last to be discarded.
// Buddies merge whatever their temperature: a merged block is warm if either half was warm, zero
// only if both were, and reported only if both were. Blocks given back by the balloon with
// content_zeroed (the host discarded them) are filed as reported: cold and zero.
//
// # Locking
//
// One SpinLock (interrupts masked in the guest) protects everything; every public method takes it.
// It is a real lock between CPUs: any CPU may call any method at any time (issue 17; an AP's
// thread allocates and frees beside the BSP's app, interrupt handlers and balloon work). Lock
// order: the heap's lock is never held while calling in here (mm/heap.h); under this lock only the
// state hook runs (the page-state array has no lock: its bytes are CAS'd with the host) and the
// console's lock may be taken (kprintf from check_invariants, panic). Nothing else.
// Hooks:
//  - the state hook runs WITH the lock held and interrupts masked, inside every transition, so that
//    the page-state array sees transitions in the order they happen (a hook run after unlocking
//    could mark a page unused after it was already handed out again). It must be short and must
//    not call the allocator.
//  - shrinkers and the OOM handler run WITHOUT the lock, from the allocating context, with
//    interrupts enabled; they may allocate, free and wait for devices. An allocation made with
//    interrupts masked (an interrupt handler, a SpinLock holder, a thread on an AP: those run
//    with interrupts masked, kernel/threads.h) never reclaims: it behaves as if it passed
//    kAllocNoReclaim. So shrinkers, the OOM handler and the demand hook run only on the BSP,
//    one reclaimer at a time per BSP stack, never on two CPUs at once.
//  - the report hook runs WITHOUT the lock, from whatever context freed the memory (possibly an
//    interrupt handler, possibly on an AP): it should only wake the reporting worker.
//
// # Per-CPU page caches (issue 17)
//
// With every CPU allocating, the one lock above serialises them all. In front of it each CPU has
// a small cache of order-0 pages, one stack per owner it serves (Kernel: the heap's slabs and
// the drivers' pages; App: kvcache and the like). alloc_pages(0) and free_pages(.., 0) for those
// owners pop and push there; the global lock is taken only to refill an empty stack (kPcpBatch
// pages) or to drain a full one (kPcpHigh - kPcpLow of its oldest pages). Other orders, other
// owners, kAllocPreferCold and everything while a balloon cache demand is in force take the
// global path as before. Off by default here (host tests see the old allocator); the guest
// turns them on unless booted with mm.pcp=off (set_percpu_caches).
//
// A cached page is free memory that one CPU has claimed in advance. Its state:
//   - metadata: a Kernel or App order-0 head (the owner it will be handed out as), tag kPcpTag,
//     no list links; counted in owner_pages_ under that owner. The fast path never writes
//     PageInfo except the tag (which nothing under the global lock reads), so buddy merging,
//     owner_of and check_invariants may read a cached page's metadata under the global lock
//     while its CPU pops and pushes.
//   - for the host: STABLE. The refill makes the same page-state claim (the state hook with the
//     new owner, under the global lock) that a normal allocation makes, so a page the host may
//     discard is never handed out unclaimed, and the host cannot discard a cached page under a
//     CPU that is about to hand it out. Whether the claim found the page zero (discarded) is
//     kept in the cache entry for kAllocZero.
//   - to the guest's own accounting: free. stats() counts it in free_bytes (and percpu_bytes),
//     not in kernel/app bytes; free_pages_count() includes it. It is neither reported nor
//     unreported, and not counted towards the report threshold.
//
//   Free/Reported ──refill (global lock, hook)──► cached ──alloc (cache lock)──► Kernel/App
//   Kernel/App ──free (cache lock)──► cached ──drain (cache lock + global lock, hook)──► Free
//
// Nothing hides from the host: whatever gives memory to the host or needs all free memory first
// drains every CPU's cache back to the free lists (where the host sees UNUSED, warm pages):
// take_pages (inflate), isolate_unreported (reporting and hinting), post_cache_demand, an
// allocation that found no free block (before any reclaim or deflate-on-OOM, also on an AP),
// and drain_percpu_caches() for callers (the balloon before its stats answer, so idle CPUs'
// caches do not stay STABLE between host polls). A page freed into a cache after a drain began
// was in use when it began.
//
// Locking: each cache has its own SpinLock (interrupts masked, so an interrupt handler on the
// same CPU cannot re-enter it; an allocation from an interrupt handler is just another fast-path
// call). Its CPU takes it on every pop/push (uncontended unless a drainer visits); a drainer
// takes it from any CPU. Order: a cache lock before the global lock; never the global lock
// before a cache lock; several cache locks only in index order (check_invariants, stats,
// free_pages_count lock all of them, then the global lock, for an exact snapshot).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernel/percpu.h"
#include "lib/atomic.h"
#include "lib/error.h"
#include "lib/spinlock.h"
#include "mm/cache_demand.h"
#include "mm/page.h"
#include "mm/stats.h"

namespace blimp::mm {

// An app cache that can give memory back under pressure, in the style of Linux's shrinkers.
// Shrinkers are asked in registration order, before the OOM handler (the balloon) is.
class Shrinker {
 public:
  // Pages scan_objects could free right now. Must be cheap and safe in any context where
  // PageAllocator::stats() is called (the balloon's stats answer calls it).
  virtual size_t count_objects() = 0;
  // Free up to `nr_pages` pages back to the allocator; returns the pages actually freed.
  virtual size_t scan_objects(size_t nr_pages) = 0;

 protected:
  ~Shrinker() = default;

 private:
  friend class PageAllocator;
  Shrinker* next_ = nullptr;
  bool registered_ = false;
};

// Called with the number of pages an allocation needs, after the shrinkers could not satisfy it.
// Returns the pages it gave back (the balloon deflates); 0 means "nothing more to give".
using OomHandler = size_t (*)(size_t pages_needed, void* ctx);

// Called (without the lock, in an allocating context) after a round of shrinking the caches for
// the balloon's demand: cache_demand() says how it went (Served: the free memory is there to
// take; Exhausted: the caches had nothing left and the demand was dropped). See post_cache_demand.
using DemandHook = void (*)(void* ctx);

// Called on every allocate/free/take/give_back/isolate/return, with the lock held (see above).
// Returns true if the hook knows every page of the range now reads as zero (e.g. the host
// discarded it while it was unused); only consulted when pages leave the free state, so that
// zero-on-allocate can skip them.
using StateHook = bool (*)(PhysAddr first_page, size_t count, Owner new_owner, void* ctx);

// Called (without the lock) when unreported free memory in blocks of at least the configured order
// first reaches the threshold. Edge-triggered: fires once, re-armed by each isolate_unreported().
using ReportHook = void (*)(uint64_t unreported_pages, void* ctx);

class PageAllocator {
 public:
  static constexpr size_t kMaxRanges = 64;

  constexpr PageAllocator() = default;
  PageAllocator(const PageAllocator&) = delete;
  PageAllocator& operator=(const PageAllocator&) = delete;

  // Takes over the given ranges (any order; trimmed to whole pages; overlaps merged). The page
  // metadata array is carved from the largest range. Only once.
  // `untouched_is_unbacked`: the memory has not been touched since the VM started (the guest's
  // boot case), so the host does not back it: file it with the reported blocks, which the balloon
  // takes last and the app reuses last. Host tests use the default (plain cold free memory).
  ErrorOr<void> init(const MemoryRange* ranges, size_t n, bool untouched_is_unbacked = false);
  bool initialized() const { return initialized_; }

  // ---- Allocation ----

  // A naturally aligned block of 2^order pages. On failure: shrinkers in order, then the OOM
  // handler (unless kAllocNoOomHook/kAllocNoReclaim), then Error::NoMemory.
  ErrorOr<PhysAddr> alloc_pages(unsigned order, Owner owner = Owner::Kernel,
                                AllocFlags flags = kAllocNone);
  // `order` must be the order it was allocated with.
  void free_pages(PhysAddr base, unsigned order);

  // Exactly `pages` contiguous pages (any count, also beyond 4 MiB). Up to 4 MiB the run starts
  // aligned to `pages` rounded up to a power of two (it is cut from such a block, whose excess goes
  // straight back to the free lists); larger runs are only page aligned. Free with free_run, all
  // at once or in page-aligned parts.
  ErrorOr<PhysAddr> alloc_run(uint64_t pages, Owner owner = Owner::Kernel,
                              AllocFlags flags = kAllocNone);
  void free_run(PhysAddr base, uint64_t pages);

  // ---- Balloon ----

  // Takes up to `max_pages` free pages, largest blocks first and cold first (see the policy
  // above), writing at most `max_runs` runs (adjacent blocks are merged into one run). Never
  // reclaims itself (it runs in the balloon's context; see post_cache_demand for how the
  // balloon gets cache memory). Returns the number of runs.
  size_t take_pages(size_t max_pages, Owner owner, PageRun* out, size_t max_runs);

  // ---- The balloon's demand on the app's caches (mm/cache_demand.h) ----

  // The balloon could not reach its target from free memory: it wants `free_pages_wanted` pages
  // free (its floor included) and asks the app's caches for the difference. The caches cannot be
  // shrunk from the balloon's context (it runs after interrupts, between any two instructions of
  // the app, and shrinkers are not reentrant), so the allocating context does it: while the
  // demand is in force, an allocation that would take free memory below it and may reclaim first
  // asks the shrinkers (up to 16 MiB at a time; counted as balloon_reclaim_pages, not as the
  // app's own stalls). `hook` is called after each such round. Allocations that cannot reclaim
  // (interrupts masked, kAllocNoReclaim) ignore the demand. Replaces any previous demand.
  void post_cache_demand(uint64_t free_pages_wanted, DemandHook hook, void* ctx);
  // The balloon ends the demand to re-plan: Pending or Served becomes Withdrawn, Exhausted stays
  // Exhausted; the hook is not called any more. Returns the demand as it ended.
  CacheDemand end_cache_demand();
  // Ends the demand and forgets it (None): the host set a new target.
  void forget_cache_demand();
  CacheDemand cache_demand();
  // A point where the caller's shrinkers may run (an app's main loop between requests): serves a
  // pending balloon demand as an allocation would. For apps whose caches stop allocating once
  // warm, which would otherwise never meet a demand. One atomic load when there is none.
  void reclaim_point();

  // Returns pages taken by take_pages, in any split (runs may cover parts of what was taken).
  // `content_zeroed`: the host discarded them (they are filed as reported: not backed, and zero
  // unless set_discarded_content_unknown(true)). Pages not held by the balloon are skipped and
  // counted (bad_give_back_pages()).
  void give_back(const PageRun* runs, size_t n, bool content_zeroed);

  // ---- Free page reporting ----

  // Takes free, unreported blocks of order >= min_order off the free lists (largest and coldest
  // first) and marks them Isolated: they are never handed out until return_isolated. Stops before
  // free memory would drop below the reporting reserve. Returns the number of runs written.
  size_t isolate_unreported(unsigned min_order, PageRun* out, size_t max_runs);
  // Puts isolated runs back. `reported`: the host took them (they become Reported, cold, and
  // Zeroed unless discarded content is unknown); otherwise they go back as they were.
  void return_isolated(const PageRun* runs, size_t n, bool reported);
  // `unknown`: pages the host was allowed to discard (reported, or given back by the balloon)
  // cannot be assumed to read as zero: the host may have skipped the discard (stock QEMU while
  // its balloon is inhibited) or refilled them (page poisoning). Reported and given-back pages
  // are then never marked Zeroed; only the state hook vouches for zero pages.
  void set_discarded_content_unknown(bool unknown);
  // Free memory isolate_unreported leaves alone, so reporting never starves the app.
  void set_reporting_reserve(uint64_t pages);
  void set_report_hook(ReportHook fn, void* ctx, unsigned min_order, uint64_t threshold_pages);
  uint64_t unreported_free_pages(unsigned min_order);

  // ---- Hooks ----

  void set_oom_handler(OomHandler fn, void* ctx = nullptr);
  void register_shrinker(Shrinker* s);
  // Waits for reclaim in progress to finish; not from inside a shrinker.
  void unregister_shrinker(Shrinker* s);
  void set_state_hook(StateHook fn, void* ctx = nullptr);

  // ---- Per-CPU caches (see "Per-CPU page caches" above) ----

  static constexpr uint32_t kPcpHigh = 64;   // a stack never holds more
  static constexpr uint32_t kPcpLow = 32;    // a full stack is drained down to this
  static constexpr uint32_t kPcpBatch = 16;  // pages an empty stack is refilled with
  // PageInfo::tag of a cached page: freeing it again is a double free. Kind nibble 0xf, which
  // the heap's tags (mm/heap.cpp) never use.
  static constexpr uint32_t kPcpTag = 0xfcac0000u;

  // Turning them off drains every cache. Meant for boot (mm.pcp=off) and for tests in a quiet
  // moment: a CPU inside alloc/free while they are turned off may still push one page, which
  // the next drain returns.
  void set_percpu_caches(bool on);
  bool percpu_caches() const { return pcp_on_.load(MemoryOrder::Relaxed); }
  // Returns every CPU's cached pages to the free lists; the pages drained. Any context, any CPU;
  // not with a cache lock or the allocator lock held (no caller outside mm can).
  uint64_t drain_percpu_caches();
  // Pages in all caches now (exact: every cache lock is taken).
  uint64_t percpu_cached_pages();

  // ---- Queries ----

  MemoryStats stats();
  uint64_t total_pages() const { return total_pages_; }
  uint64_t free_pages_count();
  // Free blocks of exactly `order` (reported or not).
  uint64_t free_block_count(unsigned order);
  uint64_t bad_give_back_pages() const { return bad_give_back_pages_; }
  bool contains(PhysAddr addr) const;
  // The managed page frames lie in [first_pfn(), end_pfn()) (with holes between ranges); both 0
  // before init().
  uint64_t first_pfn() const { return initialized_ ? ranges_[0].base_pfn : 0; }
  uint64_t end_pfn() const {
    if (!initialized_) return 0;
    const Range& r = ranges_[num_ranges_ - 1];
    return r.base_pfn + r.pages;
  }
  // The page metadata array (one PageInfo per managed page, carved from the largest range at
  // init): its first page frame and its length in pages; both 0 before init(). Sharing hints it
  // as a merge candidate (mm/sharing): VMs with the same allocation history hold byte-identical
  // metadata.
  uint64_t metadata_first_pfn() const { return metadata_first_pfn_; }
  uint64_t metadata_pages() const { return reserved_pages_; }
  // Owner of the block containing `addr` (Reserved if unmanaged).
  Owner owner_of(PhysAddr addr);
  // True if `addr` is inside a free block known to be zero.
  bool is_known_zero(PhysAddr addr);
  // A word per page for the owner of an allocated page (the heap's slab tags). Unlocked: only the
  // page's owner may use it.
  void set_tag(PhysAddr page, uint32_t tag);
  uint32_t tag(PhysAddr page) const;

  // Walks all metadata and free lists; prints the first inconsistency and returns false.
  // `verify_zeroed` also reads every free block marked Zeroed (slow, and it touches memory the
  // host may have discarded: tests only).
  // Every cache is checked too; a cached page counts under its owner (see above).
  bool check_invariants(bool verify_zeroed = false);

 private:
  struct Range {
    uint64_t base_pfn;
    uint64_t pages;
    uint32_t first_index;
  };
  struct List {
    uint32_t head = kNoPage;
    uint32_t tail = kNoPage;
    uint64_t count = 0;
  };
  enum class Policy { Warm, Cold, Balloon };

  // Index <-> address.
  int range_of_pfn(uint64_t pfn) const;
  uint32_t index_of(PhysAddr addr) const;  // kNoPage if unmanaged
  uint64_t pfn_of(uint32_t idx) const {
    const Range& r = ranges_[info_[idx].range];
    return r.base_pfn + (idx - r.first_index);
  }
  PhysAddr addr_of(uint32_t idx) const { return pfn_of(idx) << kPageShift; }
  uint32_t buddy_of(uint32_t idx, unsigned order) const;

  List& list_for(Owner o, unsigned order) {
    return o == Owner::Reported ? reported_[order] : unreported_[order];
  }
  void list_remove(uint32_t idx);
  void list_insert(uint32_t idx, unsigned order, Owner owner, uint8_t flags);
  uint32_t pick(unsigned order, Policy p, bool strict);
  uint32_t split_off_locked(uint32_t idx, unsigned from_order, unsigned order);
  uint32_t grab_block_locked(unsigned order, Policy p);
  void set_owner_locked(uint32_t idx, Owner o);
  void free_block_locked(uint32_t idx, unsigned order, uint8_t flags, Owner as);
  // Frees [idx, idx+count) of blocks owned by `expected`, splitting covering heads as needed.
  // Returns the pages released; stops at the first page not held by `expected`.
  uint64_t release_range_locked(uint32_t idx, uint64_t count, Owner expected, uint8_t flags,
                                Owner as, bool notify);
  uint32_t covering_head(uint32_t idx) const;
  void split_head_locked(uint32_t head);
  bool notify_locked(uint32_t idx, uint64_t pages, Owner owner);
  uint32_t alloc_block_locked(unsigned order, Owner owner, AllocFlags flags);
  uint32_t alloc_contiguous_locked(uint64_t pages, Owner owner);
  void zero_allocated(uint32_t idx, uint64_t pages, bool zero_requested);
  void account_free_list(uint32_t idx, unsigned order, Owner owner, int64_t sign);
  bool report_due_locked(uint64_t& unreported);
  template <typename Attempt>
  ErrorOr<PhysAddr> with_reclaim(uint64_t pages, AllocFlags flags, Attempt attempt);
  // Most a balloon demand asks of each shrinker at once, in pages (16 MiB): each round costs the
  // balloon a trip to the host, and the allocation that pays for it waits meanwhile.
  static constexpr size_t kBalloonShrinkBatch = 4096;
  template <typename Done>
  size_t shrink(size_t want, bool for_balloon, Done done);
  // A round of shrinking for the cache demand is over: records what the caches gave (`asked`:
  // they were asked at all; false when free memory already covered the demand) and calls the
  // balloon's hook.
  void after_demand_round(bool asked, size_t freed);
  // Free pages the demand keeps (0 when none is in force).
  uint64_t demand_pages_locked() const { return demand_.in_force() ? demand_.asked_pages : 0; }
  uint64_t free_locked() const {
    return owner_pages_[static_cast<unsigned>(Owner::Free)] +
           owner_pages_[static_cast<unsigned>(Owner::Reported)];
  }
  // True if taking `pages` leaves free memory at or above the balloon's demand.
  bool demand_allows_locked(uint64_t pages) const {
    const uint64_t demand = demand_pages_locked();
    return demand == 0 || free_locked() >= demand + pages;
  }

  // ---- per-CPU caches ----
  struct PcpStack {
    uint32_t count = 0;
    uint64_t zero = 0;  // bit i: the page at idx[i] is known to read as zero
    uint32_t idx[kPcpHigh] = {};
  };
  static constexpr unsigned kPcpStacks = 2;  // Kernel, App
  struct alignas(64) PcpCache {
    SpinLock lock{LockRank::kPageCache};
    PcpStack stacks[kPcpStacks];
    uint64_t allocations = 0;  // served here; stats() adds them to the global counters
    uint64_t frees = 0;
  };
  static_assert(kPcpHigh <= 64, "PcpStack::zero has one bit per entry");
  static_assert(kPcpBatch <= kPcpHigh && kPcpLow < kPcpHigh);
  static int pcp_stack_of(Owner o) { return o == Owner::Kernel ? 0 : o == Owner::App ? 1 : -1; }
  bool pcp_usable() const {
    return pcp_on_.load(MemoryOrder::Relaxed) && !demand_in_force_.load(MemoryOrder::Relaxed);
  }
  PcpCache& pcp_mine();
  // Pops a page for `owner` (refilling under the global lock when empty); kNoPage when the free
  // lists had nothing either. `zero`: the page is known to read as zero.
  uint32_t pcp_alloc(int stack, Owner owner, bool& zero);
  // Pushes an allocated order-0 page; false if it is not one this cache takes (the global path
  // then reports the error).
  bool pcp_free(PhysAddr base);
  // Moves the `n` oldest entries of `s` back to the free lists; the global lock is held.
  void pcp_drain_locked(PcpStack& s, uint32_t n);
  // Drains cache `cpu` completely (its lock, then the global lock). Returns the pages.
  uint64_t pcp_drain_cache(size_t cpu);
  bool check_invariants_locked(bool verify_zeroed, uint32_t ncpus);
  // Locks the caches of the CPUs that used theirs so far, in index order; returns how many, for
  // pcp_unlock_all and the counts in between.
  uint32_t pcp_lock_all();
  void pcp_unlock_all(uint32_t n);
  uint32_t pcp_cpus() const { return pcp_cpus_.load(MemoryOrder::Acquire); }
  // Per owner (cached pages are counted there in owner_pages_) and in total; all cache locks held.
  uint64_t pcp_cached_locked(Owner o, uint32_t ncpus) const;

  PcpCache pcp_[percpu::kMaxCpus] = {};
  Atomic<bool> pcp_on_{false};
  // One more than the highest CPU index whose cache was ever used: drainers look no further.
  Atomic<uint32_t> pcp_cpus_{0};

  SpinLock lock_{LockRank::kPageAllocator};
  bool initialized_ = false;
  PageInfo* info_ = nullptr;
  Range ranges_[kMaxRanges] = {};
  size_t num_ranges_ = 0;
  uint64_t total_pages_ = 0;  // managed, metadata excluded
  uint64_t reserved_pages_ = 0;
  uint64_t metadata_first_pfn_ = 0;

  List unreported_[kNumOrders] = {};
  List reported_[kNumOrders] = {};
  uint64_t owner_pages_[kNumOwners] = {};

  StateHook state_hook_ = nullptr;
  void* state_ctx_ = nullptr;
  OomHandler oom_handler_ = nullptr;
  void* oom_ctx_ = nullptr;
  Shrinker* shrinkers_ = nullptr;
  Atomic<uint32_t> reclaimers_{0};
  CacheDemand demand_ = {};  // under lock_
  // demand_.in_force(), for reclaim_point's check without the lock (written with demand_).
  Atomic<bool> demand_in_force_{false};
  DemandHook demand_hook_ = nullptr;
  void* demand_ctx_ = nullptr;

  ReportHook report_hook_ = nullptr;
  void* report_ctx_ = nullptr;
  unsigned report_min_order_ = kMaxOrder;
  uint64_t report_threshold_ = 0;
  uint64_t unreported_tracked_ = 0;  // unreported free pages in blocks >= report_min_order_
  bool report_armed_ = true;
  bool discarded_content_unknown_ = false;
  uint64_t reporting_reserve_ = 0;

  uint64_t bad_give_back_pages_ = 0;
  MemoryStats counters_ = {};
  Atomic<uint64_t> zero_fills_{0};
  Atomic<uint64_t> zero_skips_{0};
};

}  // namespace blimp::mm
