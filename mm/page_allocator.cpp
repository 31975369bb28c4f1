#include "mm/page_allocator.h"

#include <cstring>

#include "kernel/console.h"
#include "kernel/panic.h"
#include "kernel/percpu.h"

namespace blimp::mm {

const char* owner_name(Owner o) {
  switch (o) {
    case Owner::Free: return "free";
    case Owner::Kernel: return "kernel";
    case Owner::App: return "app";
    case Owner::Balloon: return "balloon";
    case Owner::Volatile: return "volatile";
    case Owner::Reported: return "reported";
    case Owner::Isolated: return "isolated";
    case Owner::Reserved: return "reserved";
  }
  return "?";
}

namespace {

// release_range_locked: keep each block's own Zeroed/Warm flags instead of imposing new ones.
constexpr uint8_t kKeepFlags = 0xff;
constexpr uint8_t kStateFlags = kPageZeroed | kPageWarm;

// Largest order o <= kMaxOrder such that a block of 2^o pages starts at `pfn` and fits in `count`.
unsigned fitting_order(uint64_t pfn, uint64_t count) {
  unsigned o = 0;
  while (o < kMaxOrder && (pfn & ((uint64_t{2} << o) - 1)) == 0 && (uint64_t{2} << o) <= count) ++o;
  return o;
}

// Extends the last run when the block is adjacent to it on either side (cold blocks come off the
// list tails in descending address order), else starts a new run. False when out of runs.
bool add_to_runs(PageRun* out, size_t& runs, size_t max_runs, PhysAddr a, uint64_t pages) {
  if (runs > 0) {
    PageRun& last = out[runs - 1];
    if (last.base + last.pages * kPageSize == a) {
      last.pages += pages;
      return true;
    }
    if (a + pages * kPageSize == last.base) {
      last.base = a;
      last.pages += pages;
      return true;
    }
  }
  if (runs == max_runs) return false;
  out[runs++] = PageRun{a, pages};
  return true;
}

bool is_allocatable_owner(Owner o) {
  return o == Owner::Kernel || o == Owner::App || o == Owner::Volatile || o == Owner::Balloon;
}

}  // namespace

// ---- init ----

ErrorOr<void> PageAllocator::init(const MemoryRange* in, size_t n, bool untouched_is_unbacked) {
  if (initialized_) return Error::InvalidArgument;

  // Page-align inward, sort by base, merge overlaps and neighbours: a buddy may then span the
  // boundary between two firmware entries that describe contiguous RAM.
  Range tmp[kMaxRanges];
  size_t m = 0;
  for (size_t i = 0; i < n; ++i) {
    uint64_t base = in[i].base;
    uint64_t end = in[i].size > UINT64_MAX - base ? UINT64_MAX : base + in[i].size;
    uint64_t bpfn = (base + kPageSize - 1) >> kPageShift;
    uint64_t epfn = end >> kPageShift;
    if (base > UINT64_MAX - (kPageSize - 1)) continue;
    if (epfn <= bpfn) continue;
    if (m == kMaxRanges) {
      kprintf("mm: more than %zu memory ranges, ignoring %#llx+%#llx\n", kMaxRanges,
              (unsigned long long)base, (unsigned long long)in[i].size);
      continue;
    }
    size_t j = m++;
    while (j > 0 && tmp[j - 1].base_pfn > bpfn) {
      tmp[j] = tmp[j - 1];
      --j;
    }
    tmp[j] = Range{bpfn, epfn - bpfn, 0};
  }
  num_ranges_ = 0;
  for (size_t i = 0; i < m; ++i) {
    if (num_ranges_ > 0) {
      Range& last = ranges_[num_ranges_ - 1];
      uint64_t last_end = last.base_pfn + last.pages;
      if (tmp[i].base_pfn <= last_end) {
        uint64_t end = tmp[i].base_pfn + tmp[i].pages;
        if (end > last_end) last.pages = end - last.base_pfn;
        continue;
      }
    }
    ranges_[num_ranges_++] = tmp[i];
  }
  if (num_ranges_ == 0) return Error::InvalidArgument;

  uint64_t all_pages = 0;
  size_t largest = 0;
  for (size_t i = 0; i < num_ranges_; ++i) {
    ranges_[i].first_index = static_cast<uint32_t>(all_pages);
    all_pages += ranges_[i].pages;
    if (ranges_[i].pages > ranges_[largest].pages) largest = i;
    if (all_pages >= kNoPage) return Error::InvalidArgument;  // 16 TiB of 4 KiB pages
  }
  uint64_t meta_pages = (all_pages * sizeof(PageInfo) + kPageSize - 1) / kPageSize;
  if (ranges_[largest].pages <= meta_pages) return Error::NoMemory;

  info_ = phys_to_virt<PageInfo>(ranges_[largest].base_pfn << kPageShift);
  for (size_t r = 0; r < num_ranges_; ++r) {
    for (uint64_t i = 0; i < ranges_[r].pages; ++i) {
      info_[ranges_[r].first_index + i] =
          PageInfo{kNoPage, kNoPage, 0, 0, Owner::Reserved, 0, static_cast<uint8_t>(r)};
    }
  }

  // The metadata's own pages are Reserved blocks; everything else goes on the free lists, cold
  // and not known zero (firmware and the loader may have written anywhere). With
  // untouched_is_unbacked it goes on the reported lists instead: memory nobody has touched since
  // boot is not backed by the host, exactly like memory the host discarded, so the balloon leaves
  // it for last (inflating it would give the host nothing back) and the app takes it only when no
  // backed memory is free.
  const Owner boot_owner = untouched_is_unbacked ? Owner::Reported : Owner::Free;
  for (size_t r = 0; r < num_ranges_; ++r) {
    const Range& rg = ranges_[r];
    uint64_t local = 0;
    uint64_t reserved_end = (r == largest) ? meta_pages : 0;
    while (local < rg.pages) {
      bool reserved = local < reserved_end;
      uint64_t limit = reserved ? reserved_end - local : rg.pages - local;
      unsigned o = fitting_order(rg.base_pfn + local, limit);
      uint32_t idx = rg.first_index + static_cast<uint32_t>(local);
      if (reserved) {
        info_[idx].flags = kPageHead;
        info_[idx].order = static_cast<uint8_t>(o);
        info_[idx].owner = Owner::Reserved;
        owner_pages_[static_cast<unsigned>(Owner::Reserved)] += pages_of_order(o);
      } else {
        list_insert(idx, o, boot_owner, 0);
        owner_pages_[static_cast<unsigned>(boot_owner)] += pages_of_order(o);
      }
      local += pages_of_order(o);
    }
  }
  reserved_pages_ = meta_pages;
  metadata_first_pfn_ = ranges_[largest].base_pfn;
  total_pages_ = all_pages - meta_pages;
  reporting_reserve_ = total_pages_ / 16;
  counters_.total_bytes = total_pages_ * kPageSize;
  initialized_ = true;
  return {};
}

// ---- index arithmetic ----

int PageAllocator::range_of_pfn(uint64_t pfn) const {
  size_t lo = 0, hi = num_ranges_;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const Range& r = ranges_[mid];
    if (pfn < r.base_pfn)
      hi = mid;
    else if (pfn >= r.base_pfn + r.pages)
      lo = mid + 1;
    else
      return static_cast<int>(mid);
  }
  return -1;
}

uint32_t PageAllocator::index_of(PhysAddr addr) const {
  uint64_t pfn = addr >> kPageShift;
  int r = range_of_pfn(pfn);
  if (r < 0) return kNoPage;
  return ranges_[r].first_index + static_cast<uint32_t>(pfn - ranges_[r].base_pfn);
}

uint32_t PageAllocator::buddy_of(uint32_t idx, unsigned order) const {
  const Range& r = ranges_[info_[idx].range];
  uint64_t pfn = r.base_pfn + (idx - r.first_index);
  uint64_t bp = pfn ^ pages_of_order(order);
  if (bp < r.base_pfn || bp + pages_of_order(order) > r.base_pfn + r.pages) return kNoPage;
  return r.first_index + static_cast<uint32_t>(bp - r.base_pfn);
}

uint32_t PageAllocator::covering_head(uint32_t idx) const {
  const Range& r = ranges_[info_[idx].range];
  uint64_t pfn = r.base_pfn + (idx - r.first_index);
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    uint64_t hp = pfn & ~(pages_of_order(o) - 1);
    if (hp < r.base_pfn) break;
    uint32_t h = r.first_index + static_cast<uint32_t>(hp - r.base_pfn);
    if (info_[h].flags & kPageHead) {
      return hp + pages_of_order(info_[h].order) > pfn ? h : kNoPage;
    }
  }
  return kNoPage;
}

// ---- free lists ----

void PageAllocator::account_free_list(uint32_t, unsigned order, Owner owner, int64_t sign) {
  if (owner == Owner::Free && order >= report_min_order_) {
    unreported_tracked_ += sign * static_cast<int64_t>(pages_of_order(order));
  }
}

void PageAllocator::list_insert(uint32_t idx, unsigned order, Owner owner, uint8_t flags) {
  PageInfo& p = info_[idx];
  p.order = static_cast<uint8_t>(order);
  p.owner = owner;
  p.flags = static_cast<uint8_t>((flags & kStateFlags) | kPageHead);
  List& l = list_for(owner, order);
  // Warm blocks at the head, cold at the tail: the list stays partitioned warm-then-cold and,
  // within the warm part, ordered by how recently the block was freed.
  if (owner == Owner::Free && (flags & kPageWarm)) {
    p.prev = kNoPage;
    p.next = l.head;
    if (l.head != kNoPage)
      info_[l.head].prev = idx;
    else
      l.tail = idx;
    l.head = idx;
  } else {
    p.next = kNoPage;
    p.prev = l.tail;
    if (l.tail != kNoPage)
      info_[l.tail].next = idx;
    else
      l.head = idx;
    l.tail = idx;
  }
  ++l.count;
  account_free_list(idx, order, owner, +1);
}

void PageAllocator::list_remove(uint32_t idx) {
  PageInfo& p = info_[idx];
  List& l = list_for(p.owner, p.order);
  if (p.prev != kNoPage)
    info_[p.prev].next = p.next;
  else
    l.head = p.next;
  if (p.next != kNoPage)
    info_[p.next].prev = p.prev;
  else
    l.tail = p.prev;
  p.next = p.prev = kNoPage;
  --l.count;
  account_free_list(idx, p.order, p.owner, -1);
}

// Two passes over the orders from `order` up: first only blocks of the temperature the policy
// wants (splitting a bigger block of the right temperature beats taking one of the wrong
// temperature), then anything, smallest order first.
uint32_t PageAllocator::pick(unsigned order, Policy p, bool strict) {
  List& u = unreported_[order];
  List& r = reported_[order];
  // The unreported list is partitioned warm-then-cold: its head is warm iff it holds any warm
  // block, its tail cold iff it holds any cold one.
  bool head_warm = u.head != kNoPage && (info_[u.head].flags & kPageWarm);
  bool tail_cold = u.tail != kNoPage && !(info_[u.tail].flags & kPageWarm);
  switch (p) {
    case Policy::Warm:
      if (strict) return head_warm ? u.head : kNoPage;
      return u.head != kNoPage ? u.head : r.head;
    case Policy::Cold:
      if (r.head != kNoPage) return r.head;
      return strict ? kNoPage : u.tail;
    case Policy::Balloon:
      // Backed memory first, whatever its temperature (coldest end first): inflating memory the
      // host never backed, or already discarded, gives the host nothing back.
      // Pass 1 (strict): cold backed blocks; pass 2: warm backed ones, then unbacked.
      if (strict) return tail_cold ? u.tail : kNoPage;
      return u.tail != kNoPage ? u.tail : r.head;
  }
  return kNoPage;
}

// Removes a block of exactly `order` from the free lists, splitting a larger one if needed. The
// returned head keeps its free owner (accounting unchanged) until the caller sets the new owner.
uint32_t PageAllocator::grab_block_locked(unsigned order, Policy policy) {
  for (unsigned pass = 0; pass < 2; ++pass) {
    for (unsigned k = order; k <= kMaxOrder; ++k) {
      uint32_t idx = pick(k, policy, pass == 0);
      if (idx != kNoPage) return split_off_locked(idx, k, order);
    }
  }
  return kNoPage;
}

// Takes the free block at idx (order k) off its list and splits it down to `order`, putting the
// upper halves back with the same temperature, zero mark and reported state.
uint32_t PageAllocator::split_off_locked(uint32_t idx, unsigned k, unsigned order) {
  Owner as = info_[idx].owner;
  uint8_t flags = info_[idx].flags & kStateFlags;
  list_remove(idx);
  while (k > order) {
    --k;
    list_insert(idx + static_cast<uint32_t>(pages_of_order(k)), k, as, flags);
  }
  info_[idx].order = static_cast<uint8_t>(order);
  info_[idx].flags = static_cast<uint8_t>(flags | kPageHead);
  return idx;
}

void PageAllocator::set_owner_locked(uint32_t idx, Owner o) {
  PageInfo& p = info_[idx];
  uint64_t n = pages_of_order(p.order);
  owner_pages_[static_cast<unsigned>(p.owner)] -= n;
  owner_pages_[static_cast<unsigned>(o)] += n;
  p.owner = o;
}

// Precondition: idx is a head, off the lists, already owned (and accounted) as `as`.
void PageAllocator::free_block_locked(uint32_t idx, unsigned order, uint8_t flags, Owner as) {
  flags &= kStateFlags;
  while (order < kMaxOrder) {
    uint32_t b = buddy_of(idx, order);
    if (b == kNoPage) break;
    PageInfo& bi = info_[b];
    if (!(bi.flags & kPageHead) || !is_free_owner(bi.owner) || bi.order != order) break;
    Owner bo = bi.owner;
    uint8_t bf = bi.flags;
    list_remove(b);
    // Reported only if both halves are: a half the host still backs makes the whole block
    // worth reporting again.
    Owner merged = (as == Owner::Reported && bo == Owner::Reported) ? Owner::Reported : Owner::Free;
    uint64_t n = pages_of_order(order);
    if (merged != as) {
      owner_pages_[static_cast<unsigned>(as)] -= n;
      owner_pages_[static_cast<unsigned>(merged)] += n;
    }
    if (merged != bo) {
      owner_pages_[static_cast<unsigned>(bo)] -= n;
      owner_pages_[static_cast<unsigned>(merged)] += n;
    }
    flags = static_cast<uint8_t>((flags & bf & kPageZeroed) | ((flags | bf) & kPageWarm));
    as = merged;
    uint32_t lo = idx < b ? idx : b;
    uint32_t hi = idx < b ? b : idx;
    info_[hi].flags = 0;
    info_[lo].owner = as;
    idx = lo;
    ++order;
  }
  list_insert(idx, order, as, flags);
}

void PageAllocator::split_head_locked(uint32_t h) {
  PageInfo& p = info_[h];
  unsigned o = p.order - 1u;
  PageInfo& upper = info_[h + static_cast<uint32_t>(pages_of_order(o))];
  upper.order = static_cast<uint8_t>(o);
  upper.owner = p.owner;
  upper.flags = p.flags;
  p.order = static_cast<uint8_t>(o);
}

bool PageAllocator::notify_locked(uint32_t idx, uint64_t pages, Owner owner) {
  if (!state_hook_) return false;
  return state_hook_(addr_of(idx), pages, owner, state_ctx_);
}

uint64_t PageAllocator::release_range_locked(uint32_t idx, uint64_t count, Owner expected,
                                             uint8_t flags, Owner as, bool notify) {
  uint64_t done = 0;
  while (done < count) {
    uint32_t cur = idx + static_cast<uint32_t>(done);
    uint32_t h = covering_head(cur);
    if (h == kNoPage || info_[h].owner != expected) break;
    unsigned o = info_[h].order;
    if (h != cur || pages_of_order(o) > count - done) {
      split_head_locked(h);
      continue;
    }
    uint8_t f = flags == kKeepFlags ? (info_[cur].flags & kStateFlags) : flags;
    if (notify) notify_locked(cur, pages_of_order(o), as);
    set_owner_locked(cur, as);
    free_block_locked(cur, o, f, as);
    done += pages_of_order(o);
  }
  return done;
}

// ---- allocation ----

uint32_t PageAllocator::alloc_block_locked(unsigned order, Owner owner, AllocFlags flags) {
  Policy p = (flags & kAllocPreferCold) ? Policy::Cold : Policy::Warm;
  uint32_t idx = grab_block_locked(order, p);
  if (idx == kNoPage) return kNoPage;
  set_owner_locked(idx, owner);
  if (notify_locked(idx, pages_of_order(order), owner)) info_[idx].flags |= kPageZeroed;
  return idx;
}

// Finds `pages` contiguous free pages (for runs beyond the largest block) by walking block heads
// in address order. Rare and linear in the number of blocks, which is fine for what it serves
// (an app asking the heap for tens of MiB at once).
uint32_t PageAllocator::alloc_contiguous_locked(uint64_t pages, Owner owner) {
  for (size_t r = 0; r < num_ranges_; ++r) {
    const Range& rg = ranges_[r];
    uint64_t start = 0, len = 0, local = 0;
    while (local < rg.pages) {
      uint32_t idx = rg.first_index + static_cast<uint32_t>(local);
      uint64_t n = pages_of_order(info_[idx].order);
      if (is_free_owner(info_[idx].owner)) {
        if (len == 0) start = local;
        len += n;
      } else {
        len = 0;
      }
      local += n;
      if (len >= pages) {
        uint32_t first = rg.first_index + static_cast<uint32_t>(start);
        uint64_t off = 0;
        while (off < len) {
          uint32_t b = first + static_cast<uint32_t>(off);
          uint64_t bn = pages_of_order(info_[b].order);
          list_remove(b);
          set_owner_locked(b, owner);
          if (notify_locked(b, bn, owner)) info_[b].flags |= kPageZeroed;
          off += bn;
        }
        if (len > pages) {
          release_range_locked(first + static_cast<uint32_t>(pages), len - pages, owner, kKeepFlags,
                               Owner::Free, true);
        }
        return first;
      }
    }
  }
  return kNoPage;
}

void PageAllocator::zero_allocated(uint32_t idx, uint64_t pages, bool zero_requested) {
  // Outside the lock: the blocks are ours, and nobody else writes an allocated block's head.
  uint64_t off = 0;
  while (off < pages) {
    PageInfo& p = info_[idx + off];
    uint64_t n = pages_of_order(p.order);
    if (zero_requested) {
      if (p.flags & kPageZeroed) {
        zero_skips_.fetch_add(n, MemoryOrder::Relaxed);
      } else {
        std::memset(phys_to_virt(addr_of(static_cast<uint32_t>(idx + off))), 0, n * kPageSize);
        zero_fills_.fetch_add(n, MemoryOrder::Relaxed);
      }
    }
    off += n;
  }
}

template <typename Done>
size_t PageAllocator::shrink(size_t want, bool for_balloon, Done done) {
  // Each shrinker in registration order is asked for a batch, so that a cache is not trimmed one
  // page per allocation; several passes because freed pages may not coalesce into a block of the
  // order asked for. Stops as soon as done() (checked after every shrinker that freed pages).
  size_t freed_total = 0;
  bool finished = false;
  for (int pass = 0; pass < 4 && !finished; ++pass) {
    size_t freed = 0;
    Shrinker* s;
    {
      SpinLockGuard g(lock_);
      s = shrinkers_;
    }
    while (s && !finished) {
      size_t can = s->count_objects();
      size_t asked = 0, got = 0;
      if (can > 0) {
        asked = can < want ? can : want;
        got = s->scan_objects(asked);
        freed += got;
        finished = done();
      }
      SpinLockGuard g(lock_);
      if (for_balloon) {
        counters_.balloon_reclaim_pages += got;
      } else {
        counters_.direct_scan_pages += asked;
        counters_.direct_reclaim_pages += got;
      }
      s = s->next_;
    }
    freed_total += freed;
    if (freed == 0) break;
  }
  return freed_total;
}

void PageAllocator::after_demand_round(bool asked, size_t freed) {
  DemandHook hook;
  void* ctx;
  {
    SpinLockGuard g(lock_);
    hook = demand_hook_;
    ctx = demand_ctx_;
    // (A round that began before the balloon withdrew or replaced the demand changes nothing.)
    if (demand_.in_force()) {
      demand_.given_pages += freed;
      if (asked && freed == 0) {
        // The caches had nothing left: drop the demand (the balloon re-plans and says so).
        demand_.outcome = CacheDemandOutcome::Exhausted;
        demand_in_force_.store(false);
      } else {
        demand_.outcome = CacheDemandOutcome::Served;
      }
    }
  }
  if (hook) hook(ctx);
}

template <typename Attempt>
ErrorOr<PhysAddr> PageAllocator::with_reclaim(uint64_t pages, AllocFlags flags, Attempt attempt) {
  // attempt(honour_demand): one try under the lock, leaving the balloon's demand free or not.
  // Interrupts masked means an interrupt handler, a SpinLock holder or a thread on an AP: a
  // shrinker could deadlock on a lock held below us, the balloon could not wait for the host,
  // and on an AP neither the shrinkers nor the balloon driver may run (they are the BSP's). Fail
  // fast instead, and do not make such a caller wait for a balloon demand it cannot help with.
  if (!irqs_enabled()) flags = flags | kAllocNoReclaim;
  const bool can_reclaim = !(flags & kAllocNoReclaim);
  uint32_t idx = attempt(can_reclaim);
  if (idx != kNoPage) return addr_of(idx);
  // Other CPUs' caches are free memory too: take them back before anything that costs the app
  // its caches or deflates the balloon. Needs no reclaim, so an AP's allocation does it as well.
  if (drain_percpu_caches() > 0) {
    idx = attempt(can_reclaim);
    if (idx != kNoPage) return addr_of(idx);
  }
  if (can_reclaim) {
    // Free memory would do, only the balloon's demand is in the way: this stall is the balloon's.
    bool for_balloon;
    uint64_t deficit = 0;
    {
      SpinLockGuard g(lock_);
      // (With free memory above demand + pages the attempt failed for want of a contiguous
      // block: that stall is the app's own.)
      const uint64_t demand = demand_pages_locked(), free = free_locked();
      for_balloon = demand != 0 && free >= pages && free < demand + pages;
      if (for_balloon)
        deficit = demand + pages - free;
      else
        ++counters_.alloc_stalls;
    }
    reclaimers_.fetch_add(1);
    // Shrinkers first, each asked for at least 32 pages; for a balloon demand, for up to
    // kBalloonShrinkBatch of it at a time.
    size_t want = pages < 32 ? 32 : pages;
    if (for_balloon && deficit > want)
      want = deficit < kBalloonShrinkBatch ? deficit : kBalloonShrinkBatch;
    size_t freed = shrink(want, for_balloon, [&] {
      idx = attempt(true);
      return idx != kNoPage;
    });
    if (for_balloon) {
      // The balloon takes what the caches gave now (partial progress counts: the app keeps
      // allocating, so an exact figure may never be met), and this allocation is not kept
      // waiting for more.
      // (after_demand_round drops the demand if they gave nothing.)
      if (idx == kNoPage) idx = attempt(false);
      after_demand_round(true, freed);
    }
    // Then the OOM handler (the balloon deflates), as long as it makes progress.
    if (!(flags & kAllocNoOomHook)) {
      for (int round = 0; round < 16 && idx == kNoPage; ++round) {
        OomHandler h;
        void* ctx;
        {
          SpinLockGuard g(lock_);
          h = oom_handler_;
          ctx = oom_ctx_;
          if (h) ++counters_.oom_events;
        }
        if (!h) break;
        size_t got = h(pages, ctx);
        {
          SpinLockGuard g(lock_);
          counters_.oom_pages += got;
        }
        idx = attempt(false);
        if (got == 0) break;
      }
    }
    reclaimers_.fetch_sub(1);
    if (idx != kNoPage) return addr_of(idx);
  } else {
    // Cannot reclaim: the demand is the balloon's wish, not a reason to fail this caller.
    idx = attempt(false);
    if (idx != kNoPage) return addr_of(idx);
  }
  SpinLockGuard g(lock_);
  ++counters_.alloc_failures;
  return Error::NoMemory;
}

void PageAllocator::reclaim_point() {
  if (!demand_in_force_.load(MemoryOrder::Relaxed) || !irqs_enabled()) return;
  uint64_t deficit;
  {
    SpinLockGuard g(lock_);
    const uint64_t demand = demand_pages_locked();
    if (demand == 0) return;
    deficit = demand > free_locked() ? demand - free_locked() : 0;
  }
  // No deficit: nothing to shrink, the pages are there and the balloon only has to take them.
  size_t freed = 0;
  if (deficit) {
    reclaimers_.fetch_add(1);
    freed = shrink(deficit < kBalloonShrinkBatch ? deficit : kBalloonShrinkBatch, true, [&] {
      SpinLockGuard g(lock_);
      return free_locked() >= demand_pages_locked();
    });
    reclaimers_.fetch_sub(1);
  }
  after_demand_round(deficit != 0, freed);
}

ErrorOr<PhysAddr> PageAllocator::alloc_pages(unsigned order, Owner owner, AllocFlags flags) {
  if (!initialized_ || order > kMaxOrder || !is_allocatable_owner(owner))
    return Error::InvalidArgument;
  if (order == 0 && !(flags & kAllocPreferCold) && pcp_usable()) {
    const int stack = pcp_stack_of(owner);
    if (stack >= 0) {
      bool zero = false;
      uint32_t idx = pcp_alloc(stack, owner, zero);
      if (idx != kNoPage) {
        if (flags & kAllocZero) {
          if (zero) {
            zero_skips_.fetch_add(1, MemoryOrder::Relaxed);
          } else {
            std::memset(phys_to_virt(addr_of(idx)), 0, kPageSize);
            zero_fills_.fetch_add(1, MemoryOrder::Relaxed);
          }
        }
        return addr_of(idx);
      }
      // Nothing free on the lists either: the global path drains the other caches, reclaims.
    }
  }
  auto attempt = [&](bool honour_demand) -> uint32_t {
    SpinLockGuard g(lock_);
    if (honour_demand && !demand_allows_locked(pages_of_order(order))) return kNoPage;
    uint32_t idx = alloc_block_locked(order, owner, flags);
    if (idx != kNoPage) ++counters_.allocations;
    return idx;
  };
  PhysAddr addr = TRY(with_reclaim(pages_of_order(order), flags, attempt));
  zero_allocated(index_of(addr), pages_of_order(order), flags & kAllocZero);
  return addr;
}

ErrorOr<PhysAddr> PageAllocator::alloc_run(uint64_t pages, Owner owner, AllocFlags flags) {
  if (!initialized_ || pages == 0 || pages > total_pages_ || !is_allocatable_owner(owner))
    return Error::InvalidArgument;
  auto attempt = [&](bool honour_demand) -> uint32_t {
    SpinLockGuard g(lock_);
    if (honour_demand && !demand_allows_locked(pages)) return kNoPage;
    uint32_t idx;
    if (pages <= kMaxOrderPages) {
      unsigned o = order_for_pages(pages);
      idx = alloc_block_locked(o, owner, flags);
      if (idx != kNoPage && pages < pages_of_order(o)) {
        release_range_locked(idx + static_cast<uint32_t>(pages), pages_of_order(o) - pages, owner,
                             kKeepFlags, Owner::Free, true);
      }
    } else {
      idx = alloc_contiguous_locked(pages, owner);
    }
    // No block of the rounded-up order: the pages may still be free side by side in smaller
    // blocks (an odd-sized run needs no power-of-two block). Worth a scan before reclaiming.
    if (idx == kNoPage && pages > 1 && pages <= kMaxOrderPages)
      idx = alloc_contiguous_locked(pages, owner);
    if (idx != kNoPage) ++counters_.allocations;
    return idx;
  };
  PhysAddr addr = TRY(with_reclaim(pages, flags, attempt));
  zero_allocated(index_of(addr), pages, flags & kAllocZero);
  return addr;
}

void PageAllocator::free_pages(PhysAddr base, unsigned order) {
  if (order == 0 && pcp_usable() && pcp_free(base)) return;
  bool fire;
  uint64_t unreported;
  {
    SpinLockGuard g(lock_);
    uint32_t idx = index_of(base);
    if (idx == kNoPage || (base & (kPageSize - 1)) || !(info_[idx].flags & kPageHead) ||
        info_[idx].order != order || !is_allocatable_owner(info_[idx].owner)) {
      panic("free_pages(%#llx, %u): not an allocated block (owner %s, order %u)",
            (unsigned long long)base, order,
            idx == kNoPage ? "unmanaged" : owner_name(info_[idx].owner),
            idx == kNoPage ? 0u : info_[idx].order);
    }
    notify_locked(idx, pages_of_order(order), Owner::Free);
    set_owner_locked(idx, Owner::Free);
    free_block_locked(idx, order, kPageWarm, Owner::Free);
    ++counters_.frees;
    fire = report_due_locked(unreported);
  }
  if (fire) report_hook_(unreported, report_ctx_);
}

void PageAllocator::free_run(PhysAddr base, uint64_t pages) {
  bool fire;
  uint64_t unreported;
  {
    SpinLockGuard g(lock_);
    uint32_t idx = index_of(base);
    uint32_t last = pages ? index_of(base + (pages - 1) * kPageSize) : kNoPage;
    uint32_t h = idx == kNoPage ? kNoPage : covering_head(idx);
    if (idx == kNoPage || last != idx + pages - 1 || (base & (kPageSize - 1)) || h == kNoPage ||
        !is_allocatable_owner(info_[h].owner)) {
      panic("free_run(%#llx, %llu): not an allocated run", (unsigned long long)base,
            (unsigned long long)pages);
    }
    uint64_t done = release_range_locked(idx, pages, info_[h].owner, kPageWarm, Owner::Free, true);
    if (done != pages) {
      panic("free_run(%#llx, %llu): page %llu has another owner", (unsigned long long)base,
            (unsigned long long)pages, (unsigned long long)done);
    }
    ++counters_.frees;
    fire = report_due_locked(unreported);
  }
  if (fire) report_hook_(unreported, report_ctx_);
}

// Edge-triggered: fires once when unreported memory reaches the threshold, then waits for the
// reporting driver to come back (isolate_unreported re-arms).
bool PageAllocator::report_due_locked(uint64_t& unreported) {
  unreported = unreported_tracked_;
  if (!report_hook_ || !report_armed_ || unreported_tracked_ < report_threshold_) return false;
  report_armed_ = false;
  return true;
}

// ---- balloon ----

size_t PageAllocator::take_pages(size_t max_pages, Owner owner, PageRun* out, size_t max_runs) {
  if (!initialized_ || max_runs == 0 || max_pages == 0 || !is_allocatable_owner(owner)) return 0;
  // The balloon hands these pages to the host: cached free pages first go back where it can
  // take them.
  drain_percpu_caches();
  SpinLockGuard g(lock_);
  size_t runs = 0;
  uint64_t left = max_pages;
  for (int o = kMaxOrder; o >= 0 && left > 0; --o) {
    const uint64_t n = pages_of_order(static_cast<unsigned>(o));
    while (left >= n) {
      uint32_t idx = grab_block_locked(static_cast<unsigned>(o), Policy::Balloon);
      if (idx == kNoPage) break;
      PhysAddr a = addr_of(idx);
      if (!add_to_runs(out, runs, max_runs, a, n)) {
        free_block_locked(idx, static_cast<unsigned>(o), info_[idx].flags, info_[idx].owner);
        return runs;
      }
      notify_locked(idx, n, owner);
      set_owner_locked(idx, owner);
      counters_.pages_taken += n;
      left -= n;
    }
  }
  return runs;
}

void PageAllocator::give_back(const PageRun* runs, size_t n, bool content_zeroed) {
  bool fire;
  uint64_t unreported;
  {
    SpinLockGuard g(lock_);
    // Pages the host discarded are what reporting would produce: file them as reported (not
    // backed), so reporting does not send them again and the app reuses them last; zero only
    // when discarded pages are known to read as zero (see set_discarded_content_unknown).
    Owner as = content_zeroed ? Owner::Reported : Owner::Free;
    uint8_t flags = content_zeroed && !discarded_content_unknown_ ? kPageZeroed : 0;
    for (size_t i = 0; i < n; ++i) {
      uint64_t done = 0;
      while (done < runs[i].pages) {
        PhysAddr a = runs[i].base + done * kPageSize;
        uint32_t idx = index_of(a);
        if (idx == kNoPage || (a & (kPageSize - 1))) {
          bad_give_back_pages_ += runs[i].pages - done;
          break;
        }
        const Range& rg = ranges_[info_[idx].range];
        uint64_t in_range = rg.base_pfn + rg.pages - (a >> kPageShift);
        uint64_t want = runs[i].pages - done < in_range ? runs[i].pages - done : in_range;
        uint64_t rel = release_range_locked(idx, want, Owner::Balloon, flags, as, true);
        counters_.pages_returned += rel;
        if (content_zeroed) counters_.pages_reported += rel;
        done += rel;
        if (rel < want) {
          ++bad_give_back_pages_;
          ++done;
        }
      }
    }
    fire = report_due_locked(unreported);
  }
  if (fire) report_hook_(unreported, report_ctx_);
}

// ---- reporting ----

size_t PageAllocator::isolate_unreported(unsigned min_order, PageRun* out, size_t max_runs) {
  if (!initialized_ || max_runs == 0) return 0;
  if (min_order > kMaxOrder) min_order = kMaxOrder;
  // Cached pages back on the lists merge with their buddies into blocks worth reporting.
  drain_percpu_caches();
  SpinLockGuard g(lock_);
  report_armed_ = true;
  size_t runs = 0;
  uint64_t free_now = owner_pages_[static_cast<unsigned>(Owner::Free)] +
                      owner_pages_[static_cast<unsigned>(Owner::Reported)];
  for (int o = kMaxOrder; o >= static_cast<int>(min_order); --o) {
    const uint64_t n = pages_of_order(static_cast<unsigned>(o));
    while (unreported_[o].tail != kNoPage) {
      if (free_now < reporting_reserve_ + n) return runs;
      uint32_t idx = unreported_[o].tail;
      PhysAddr a = addr_of(idx);
      if (!add_to_runs(out, runs, max_runs, a, n)) return runs;
      list_remove(idx);
      notify_locked(idx, n, Owner::Isolated);
      set_owner_locked(idx, Owner::Isolated);
      free_now -= n;
    }
  }
  return runs;
}

void PageAllocator::return_isolated(const PageRun* runs, size_t n, bool reported) {
  bool fire;
  uint64_t unreported;
  {
    SpinLockGuard g(lock_);
    Owner as = reported ? Owner::Reported : Owner::Free;
    uint8_t flags = reported ? (discarded_content_unknown_ ? 0 : kPageZeroed) : kKeepFlags;
    for (size_t i = 0; i < n; ++i) {
      uint32_t idx = index_of(runs[i].base);
      uint32_t last =
          runs[i].pages ? index_of(runs[i].base + (runs[i].pages - 1) * kPageSize) : kNoPage;
      if (idx == kNoPage || last != idx + runs[i].pages - 1) {
        kprintf("mm: return_isolated: bogus run %#llx+%llu\n", (unsigned long long)runs[i].base,
                (unsigned long long)runs[i].pages);
        continue;
      }
      uint64_t done = release_range_locked(idx, runs[i].pages, Owner::Isolated, flags, as, true);
      if (done != runs[i].pages) {
        kprintf("mm: return_isolated: %#llx+%llu was not isolated from page %llu on\n",
                (unsigned long long)runs[i].base, (unsigned long long)runs[i].pages,
                (unsigned long long)done);
      }
      if (reported) counters_.pages_reported += done;
    }
    fire = report_due_locked(unreported);
  }
  if (fire) report_hook_(unreported, report_ctx_);
}

void PageAllocator::set_discarded_content_unknown(bool unknown) {
  SpinLockGuard g(lock_);
  discarded_content_unknown_ = unknown;
}

void PageAllocator::set_reporting_reserve(uint64_t pages) {
  SpinLockGuard g(lock_);
  reporting_reserve_ = pages;
}

void PageAllocator::set_report_hook(ReportHook fn, void* ctx, unsigned min_order,
                                    uint64_t threshold_pages) {
  SpinLockGuard g(lock_);
  report_hook_ = fn;
  report_ctx_ = ctx;
  report_min_order_ = min_order > kMaxOrder ? kMaxOrder : min_order;
  report_threshold_ = threshold_pages;
  report_armed_ = true;
  unreported_tracked_ = 0;
  for (unsigned o = report_min_order_; o <= kMaxOrder; ++o)
    unreported_tracked_ += unreported_[o].count * pages_of_order(o);
}

uint64_t PageAllocator::unreported_free_pages(unsigned min_order) {
  SpinLockGuard g(lock_);
  uint64_t total = 0;
  for (unsigned o = min_order; o <= kMaxOrder; ++o)
    total += unreported_[o].count * pages_of_order(o);
  return total;
}

// ---- hooks ----

void PageAllocator::post_cache_demand(uint64_t free_pages_wanted, DemandHook hook, void* ctx) {
  {
    SpinLockGuard g(lock_);
    demand_ = {free_pages_wanted, 0, CacheDemandOutcome::Pending};
    demand_in_force_.store(true);
    demand_hook_ = hook;
    demand_ctx_ = ctx;
  }
  // From now on the caches are bypassed (pcp_usable), so the demand's free-memory checks under
  // the global lock see every free page.
  drain_percpu_caches();
}

CacheDemand PageAllocator::end_cache_demand() {
  SpinLockGuard g(lock_);
  if (demand_.in_force()) demand_.outcome = CacheDemandOutcome::Withdrawn;
  demand_in_force_.store(false);
  demand_hook_ = nullptr;
  demand_ctx_ = nullptr;
  return demand_;
}

void PageAllocator::forget_cache_demand() {
  (void)end_cache_demand();
  SpinLockGuard g(lock_);
  demand_ = {};
}

CacheDemand PageAllocator::cache_demand() {
  SpinLockGuard g(lock_);
  return demand_;
}

void PageAllocator::set_oom_handler(OomHandler fn, void* ctx) {
  SpinLockGuard g(lock_);
  oom_handler_ = fn;
  oom_ctx_ = ctx;
}

void PageAllocator::register_shrinker(Shrinker* s) {
  SpinLockGuard g(lock_);
  if (s->registered_) return;
  s->next_ = nullptr;
  s->registered_ = true;
  Shrinker** p = &shrinkers_;
  while (*p) p = &(*p)->next_;
  *p = s;
}

void PageAllocator::unregister_shrinker(Shrinker* s) {
  {
    SpinLockGuard g(lock_);
    if (!s->registered_) return;
    for (Shrinker** p = &shrinkers_; *p; p = &(*p)->next_) {
      if (*p == s) {
        *p = s->next_;
        break;
      }
    }
    s->registered_ = false;
  }
  // A reclaimer may still hold a pointer to it (it walks the list without the lock).
  while (reclaimers_.load() != 0) cpu_relax();
}

void PageAllocator::set_state_hook(StateHook fn, void* ctx) {
  SpinLockGuard g(lock_);
  state_hook_ = fn;
  state_ctx_ = ctx;
}

// ---- per-CPU caches ----

PageAllocator::PcpCache& PageAllocator::pcp_mine() {
  const size_t cpu = percpu::cpu_index();
  // Published before the cache can hold a page, so a drainer that starts later looks at it.
  uint32_t seen = pcp_cpus_.load(MemoryOrder::Relaxed);
  while (seen <= cpu && !pcp_cpus_.compare_exchange(seen, static_cast<uint32_t>(cpu + 1))) {
  }
  return pcp_[cpu];
}

uint32_t PageAllocator::pcp_alloc(int stack, Owner owner, bool& zero) {
  PcpCache& c = pcp_mine();
  SpinLockGuard cg(c.lock);
  PcpStack& st = c.stacks[stack];
  if (st.count == 0) {
    // Refill: the normal allocation's pick (warmest first) and page-state claim, for a batch.
    uint32_t got[kPcpBatch];
    uint64_t got_zero = 0;
    uint32_t n = 0;
    {
      SpinLockGuard g(lock_);
      while (n < kPcpBatch) {
        uint32_t idx = grab_block_locked(0, Policy::Warm);
        if (idx == kNoPage) break;
        const bool was_zero = info_[idx].flags & kPageZeroed;
        set_owner_locked(idx, owner);
        if (notify_locked(idx, 1, owner) || was_zero) got_zero |= uint64_t{1} << n;
        info_[idx].flags = kPageHead;
        info_[idx].tag = kPcpTag;
        got[n++] = idx;
      }
    }
    // The warmest page on top of the stack.
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t from = n - 1 - i;
      st.idx[i] = got[from];
      if (got_zero & (uint64_t{1} << from)) st.zero |= uint64_t{1} << i;
    }
    st.count = n;
    if (n == 0) return kNoPage;
  }
  const uint32_t top = --st.count;
  const uint32_t idx = st.idx[top];
  const uint64_t bit = uint64_t{1} << top;
  zero = st.zero & bit;
  st.zero &= ~bit;
  info_[idx].tag = 0;
  ++c.allocations;
  return idx;
}

bool PageAllocator::pcp_free(PhysAddr base) {
  const uint32_t idx = index_of(base);
  if (idx == kNoPage || (base & (kPageSize - 1))) return false;
  // The caller owns the page, so nobody else writes its metadata now.
  PageInfo& p = info_[idx];
  const int stack = pcp_stack_of(p.owner);
  if (!(p.flags & kPageHead) || p.order != 0 || stack < 0) return false;
  if (p.tag == kPcpTag) {
    panic("free_pages(%#llx, 0): double free (the page is in a per-CPU cache)",
          (unsigned long long)base);
  }
  bool fire = false;
  uint64_t unreported = 0;
  PcpCache& c = pcp_mine();
  {
    SpinLockGuard cg(c.lock);
    PcpStack& st = c.stacks[stack];
    if (st.count == kPcpHigh) {
      SpinLockGuard g(lock_);
      pcp_drain_locked(st, kPcpHigh - kPcpLow);
      fire = report_due_locked(unreported);
    }
    p.tag = kPcpTag;
    st.zero &= ~(uint64_t{1} << st.count);
    st.idx[st.count++] = idx;
    ++c.frees;
  }
  if (fire) report_hook_(unreported, report_ctx_);
  return true;
}

void PageAllocator::pcp_drain_locked(PcpStack& st, uint32_t n) {
  if (n > st.count) n = st.count;
  // Oldest first, so the most recently freed page ends up at the warm head of the list.
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t idx = st.idx[i];
    // A page still zero since its claim was never handed out: the host backs it no more than
    // before, so it goes back cold and zero, not warm.
    const uint8_t flags = (st.zero >> i) & 1 ? kPageZeroed : kPageWarm;
    info_[idx].tag = 0;
    notify_locked(idx, 1, Owner::Free);
    set_owner_locked(idx, Owner::Free);
    free_block_locked(idx, 0, flags, Owner::Free);
  }
  for (uint32_t i = n; i < st.count; ++i) st.idx[i - n] = st.idx[i];
  st.zero = n >= 64 ? 0 : st.zero >> n;
  st.count -= n;
}

uint64_t PageAllocator::pcp_drain_cache(size_t cpu) {
  PcpCache& c = pcp_[cpu];
  uint64_t drained = 0;
  bool fire = false;
  uint64_t unreported = 0;
  {
    SpinLockGuard cg(c.lock);
    uint32_t held = 0;
    for (auto& st : c.stacks) held += st.count;
    if (held == 0) return 0;
    SpinLockGuard g(lock_);
    for (auto& st : c.stacks) {
      drained += st.count;
      pcp_drain_locked(st, st.count);
    }
    fire = report_due_locked(unreported);
  }
  if (fire) report_hook_(unreported, report_ctx_);
  return drained;
}

uint64_t PageAllocator::drain_percpu_caches() {
  if (!initialized_) return 0;
  uint64_t drained = 0;
  const uint32_t n = pcp_cpus();
  for (uint32_t cpu = 0; cpu < n; ++cpu) drained += pcp_drain_cache(cpu);
  return drained;
}

void PageAllocator::set_percpu_caches(bool on) {
  pcp_on_.store(on);
  if (!on) drain_percpu_caches();
}

uint32_t PageAllocator::pcp_lock_all() {
  // A CPU that uses its cache for the first time after this load was not holding pages before:
  // it is left out, and so it is by pcp_unlock_all and the counts in between.
  const uint32_t n = pcp_cpus();
  for (uint32_t c = 0; c < n; ++c) pcp_[c].lock.lock();
  return n;
}

void PageAllocator::pcp_unlock_all(uint32_t n) {
  // In reverse, so that each lock restores the interrupt state it saved.
  while (n > 0) pcp_[--n].lock.unlock();
}

uint64_t PageAllocator::pcp_cached_locked(Owner o, uint32_t n) const {
  const int k = pcp_stack_of(o);
  if (k < 0) return 0;
  uint64_t total = 0;
  for (uint32_t c = 0; c < n; ++c) total += pcp_[c].stacks[k].count;
  return total;
}

uint64_t PageAllocator::percpu_cached_pages() {
  const uint32_t n = pcp_lock_all();
  uint64_t pages = pcp_cached_locked(Owner::Kernel, n) + pcp_cached_locked(Owner::App, n);
  pcp_unlock_all(n);
  return pages;
}

// ---- queries ----

MemoryStats PageAllocator::stats() {
  MemoryStats s;
  auto bytes = [&](Owner o) { return owner_pages_[static_cast<unsigned>(o)] * kPageSize; };
  const uint32_t ncpus = pcp_lock_all();
  {
    SpinLockGuard g(lock_);
    s = counters_;
    // Cached pages are counted under the owner they will be handed out as; they are free.
    const uint64_t cached_kernel = pcp_cached_locked(Owner::Kernel, ncpus) * kPageSize;
    const uint64_t cached_app = pcp_cached_locked(Owner::App, ncpus) * kPageSize;
    s.percpu_bytes = cached_kernel + cached_app;
    s.free_bytes =
        bytes(Owner::Free) + bytes(Owner::Reported) + bytes(Owner::Isolated) + s.percpu_bytes;
    s.balloon_bytes = bytes(Owner::Balloon);
    s.reported_bytes = bytes(Owner::Reported);
    s.isolated_bytes = bytes(Owner::Isolated);
    s.kernel_bytes = bytes(Owner::Kernel) - cached_kernel;
    s.app_bytes = bytes(Owner::App) - cached_app;
    s.volatile_bytes = bytes(Owner::Volatile);
    s.reserved_bytes = bytes(Owner::Reserved);
    for (uint32_t c = 0; c < ncpus; ++c) {
      s.allocations += pcp_[c].allocations;
      s.frees += pcp_[c].frees;
    }
  }
  pcp_unlock_all(ncpus);
  s.zero_fills = zero_fills_.load(MemoryOrder::Relaxed);
  s.zero_skips = zero_skips_.load(MemoryOrder::Relaxed);
  uint64_t cache_pages = 0;
  reclaimers_.fetch_add(1);
  Shrinker* sh;
  {
    SpinLockGuard g(lock_);
    sh = shrinkers_;
  }
  while (sh) {
    cache_pages += sh->count_objects();
    SpinLockGuard g(lock_);
    sh = sh->next_;
  }
  reclaimers_.fetch_sub(1);
  s.cache_bytes = cache_pages * kPageSize;
  s.available_bytes = s.free_bytes + s.cache_bytes;
  return s;
}

uint64_t PageAllocator::free_pages_count() {
  const uint32_t ncpus = pcp_lock_all();
  uint64_t n;
  {
    SpinLockGuard g(lock_);
    n = free_locked() + pcp_cached_locked(Owner::Kernel, ncpus) +
        pcp_cached_locked(Owner::App, ncpus);
  }
  pcp_unlock_all(ncpus);
  return n;
}

uint64_t PageAllocator::free_block_count(unsigned order) {
  if (order > kMaxOrder) return 0;
  SpinLockGuard g(lock_);
  return unreported_[order].count + reported_[order].count;
}

bool PageAllocator::contains(PhysAddr addr) const {
  return initialized_ && index_of(addr) != kNoPage;
}

Owner PageAllocator::owner_of(PhysAddr addr) {
  SpinLockGuard g(lock_);
  uint32_t idx = initialized_ ? index_of(addr) : kNoPage;
  if (idx == kNoPage) return Owner::Reserved;
  uint32_t h = covering_head(idx);
  return h == kNoPage ? Owner::Reserved : info_[h].owner;
}

bool PageAllocator::is_known_zero(PhysAddr addr) {
  SpinLockGuard g(lock_);
  uint32_t idx = initialized_ ? index_of(addr) : kNoPage;
  if (idx == kNoPage) return false;
  uint32_t h = covering_head(idx);
  return h != kNoPage && is_free_owner(info_[h].owner) && (info_[h].flags & kPageZeroed);
}

void PageAllocator::set_tag(PhysAddr page, uint32_t tag) {
  uint32_t idx = index_of(page);
  if (idx != kNoPage) info_[idx].tag = tag;
}

uint32_t PageAllocator::tag(PhysAddr page) const {
  uint32_t idx = initialized_ ? index_of(page) : kNoPage;
  return idx == kNoPage ? 0 : info_[idx].tag;
}

bool PageAllocator::check_invariants(bool verify_zeroed) {
  const uint32_t ncpus = pcp_lock_all();
  bool ok;
  {
    SpinLockGuard g(lock_);
    ok = check_invariants_locked(verify_zeroed, ncpus);
  }
  pcp_unlock_all(ncpus);
  return ok;
}

bool PageAllocator::check_invariants_locked(bool verify_zeroed, uint32_t ncpus) {
#define MM_CHECK(cond, ...)                      \
  do {                                           \
    if (!(cond)) {                               \
      kprintf("mm invariant: " __VA_ARGS__);     \
      kprintf(" [%s:%d]\n", __FILE__, __LINE__); \
      return false;                              \
    }                                            \
  } while (0)
  uint64_t owners[kNumOwners] = {};
  uint64_t free_heads[2][kNumOrders] = {};
  uint64_t tracked = 0;
  for (size_t r = 0; r < num_ranges_; ++r) {
    const Range& rg = ranges_[r];
    uint64_t local = 0;
    while (local < rg.pages) {
      uint32_t idx = rg.first_index + static_cast<uint32_t>(local);
      const PageInfo& p = info_[idx];
      uint64_t pfn = rg.base_pfn + local;
      MM_CHECK(p.flags & kPageHead, "page %#llx not covered by a block", (unsigned long long)pfn);
      MM_CHECK(p.order <= kMaxOrder, "bad order %u", p.order);
      uint64_t n = pages_of_order(p.order);
      MM_CHECK((pfn & (n - 1)) == 0, "block %#llx misaligned for order %u", (unsigned long long)pfn,
               p.order);
      MM_CHECK(local + n <= rg.pages, "block %#llx crosses its range", (unsigned long long)pfn);
      for (uint64_t j = 0; j < n; ++j) {
        MM_CHECK(info_[idx + j].range == r, "page %#llx has wrong range",
                 (unsigned long long)(pfn + j));
        MM_CHECK(j == 0 || !(info_[idx + j].flags & kPageHead), "head inside block %#llx",
                 (unsigned long long)pfn);
      }
      owners[static_cast<unsigned>(p.owner)] += n;
      if (is_free_owner(p.owner)) {
        free_heads[p.owner == Owner::Reported][p.order]++;
        if (p.owner == Owner::Free && p.order >= report_min_order_) tracked += n;
        uint32_t b = p.order < kMaxOrder ? buddy_of(idx, p.order) : kNoPage;
        MM_CHECK(b == kNoPage || !(info_[b].flags & kPageHead) || !is_free_owner(info_[b].owner) ||
                     info_[b].order != p.order,
                 "free buddies %#llx order %u not merged", (unsigned long long)pfn, p.order);
        if (verify_zeroed && (p.flags & kPageZeroed)) {
          const uint64_t* w = phys_to_virt<const uint64_t>(pfn << kPageShift);
          for (uint64_t k = 0; k < n * kPageSize / 8; ++k)
            MM_CHECK(w[k] == 0, "block %#llx marked zero is not", (unsigned long long)pfn);
        }
      } else {
        MM_CHECK(p.next == kNoPage && p.prev == kNoPage, "allocated block %#llx has list links",
                 (unsigned long long)pfn);
      }
      local += n;
    }
  }
  for (unsigned o = 0; o < kNumOwners; ++o) {
    MM_CHECK(owners[o] == owner_pages_[o], "owner %s: %llu pages counted, %llu accounted",
             owner_name(static_cast<Owner>(o)), (unsigned long long)owners[o],
             (unsigned long long)owner_pages_[o]);
  }
  MM_CHECK(tracked == unreported_tracked_, "unreported tracking %llu != %llu",
           (unsigned long long)tracked, (unsigned long long)unreported_tracked_);
  // Cached pages: order-0 heads of the stack's owner, tagged, off the lists, each once.
  uint64_t cached[kPcpStacks] = {};
  for (uint32_t c = 0; c < ncpus; ++c) {
    for (unsigned k = 0; k < kPcpStacks; ++k) {
      const PcpStack& st = pcp_[c].stacks[k];
      const Owner want = k == 0 ? Owner::Kernel : Owner::App;
      MM_CHECK(st.count <= kPcpHigh, "cpu %u cache holds %u pages", c, st.count);
      for (uint32_t i = 0; i < st.count; ++i) {
        const uint32_t idx = st.idx[i];
        MM_CHECK(idx < total_pages_ + reserved_pages_, "cpu %u caches bad index %u", c, idx);
        const PageInfo& p = info_[idx];
        MM_CHECK((p.flags & kPageHead) && p.order == 0 && p.owner == want && p.tag == kPcpTag &&
                     p.next == kNoPage && p.prev == kNoPage,
                 "cpu %u caches page %#llx as %s: owner %s order %u tag %#x", c,
                 (unsigned long long)pfn_of(idx), owner_name(want), owner_name(p.owner), p.order,
                 p.tag);
        for (uint32_t j = 0; j < i; ++j)
          MM_CHECK(st.idx[j] != idx, "cpu %u caches page %#llx twice", c,
                   (unsigned long long)pfn_of(idx));
      }
      cached[k] += st.count;
    }
  }
  MM_CHECK(cached[0] <= owner_pages_[static_cast<unsigned>(Owner::Kernel)] &&
               cached[1] <= owner_pages_[static_cast<unsigned>(Owner::App)],
           "more pages cached than owned");
  for (int rep = 0; rep < 2; ++rep) {
    for (unsigned o = 0; o <= kMaxOrder; ++o) {
      const List& l = rep ? reported_[o] : unreported_[o];
      uint64_t count = 0;
      uint32_t prev = kNoPage;
      bool seen_cold = false;
      for (uint32_t i = l.head; i != kNoPage; i = info_[i].next) {
        MM_CHECK(count <= total_pages_, "free list loops");
        const PageInfo& p = info_[i];
        MM_CHECK(p.prev == prev, "broken prev link in list order %u", o);
        MM_CHECK((p.flags & kPageHead) && p.order == o, "list order %u holds a non-head", o);
        MM_CHECK(p.owner == (rep ? Owner::Reported : Owner::Free), "list holds owner %s",
                 owner_name(p.owner));
        if (!rep) {
          bool warm = p.flags & kPageWarm;
          MM_CHECK(!(warm && seen_cold), "warm block after a cold one in list order %u", o);
          seen_cold |= !warm;
        }
        prev = i;
        ++count;
      }
      MM_CHECK(l.tail == prev, "list order %u tail mismatch", o);
      MM_CHECK(count == l.count && count == free_heads[rep][o],
               "list order %u: %llu linked, %llu counted, %llu free heads", o,
               (unsigned long long)count, (unsigned long long)l.count,
               (unsigned long long)free_heads[rep][o]);
    }
  }
#undef MM_CHECK
  return true;
}

}  // namespace blimp::mm
