// Per-page metadata of the page allocator, and the small value types its clients exchange with
// it (runs of pages, memory ranges, allocation flags).
//
// The metadata lives in an array carved out of managed RAM at init, one PageInfo per 4 KiB page.
// Free-list links are kept here and never in the free pages themselves: a free page that the host
// has discarded (free page reporting, page states) must stay untouched, or writing a list link into
// it would make the host back it again and undo the discard.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernel/boot/boot_info.h"
#include "kernel/memory.h"

namespace blimp::mm {

// Orders 0 (4 KiB) .. kMaxOrder (4 MiB). 4 MiB blocks hold two host huge pages, so a block handed
// to the balloon or reported to the host can be dropped by the host as whole THPs.
constexpr unsigned kMaxOrder = 10;
constexpr unsigned kNumOrders = kMaxOrder + 1;
constexpr uint64_t kMaxOrderPages = uint64_t{1} << kMaxOrder;

// Who holds a page. Free and Reported are the two states of pages on the free lists; every other
// owner means the page is off the free lists.
//
// Transitions (all under the allocator lock; the state hook sees each one except Free<->Reported
// changes caused by buddy merging, which are the same "unused" state for the host):
//
//   Free ──alloc──► Kernel/App/Volatile ──free──► Free
//   Free/Reported ──take_pages──► Balloon ──give_back──► Free
//   Free ──isolate_unreported──► Isolated ──return_isolated(reported)──► Reported
//                                         ──return_isolated(!reported)─► Free
//   Reported ──alloc/take──► (owner)      Reported ⊕ Free buddies ──merge──► Free
//   Reserved: never managed (allocator metadata); never changes.
//
// A page in a per-CPU cache (mm/page_allocator.h, "Per-CPU page caches") has no owner of its
// own: it is an order-0 Kernel or App head tagged PageAllocator::kPcpTag, STABLE to the host and
// free to the guest's counts. It enters and leaves the cache through the transitions above
// (refill = alloc, drain = free, under the lock, seen by the state hook); popping and pushing it
// in the cache are no transitions.
enum class Owner : uint8_t {
  Free = 0,
  Kernel,
  App,
  Balloon,
  Volatile,
  Reported,
  Isolated,
  Reserved,
};
constexpr unsigned kNumOwners = 8;

const char* owner_name(Owner o);

constexpr bool is_free_owner(Owner o) { return o == Owner::Free || o == Owner::Reported; }

// Flags of a block, valid on its head page.
//   Head:   this page starts a block (free or allocated) of `order`; pages inside a block never
//           have it, which is what lets buddy merging trust the buddy's metadata.
//   Zeroed: every byte of the block is known to be zero (the host discarded it, or the balloon
//           got it back discarded). Cleared when the block is handed out, conservatively ANDed
//           when buddies merge.
//   Warm:   the block was freed by the guest (so the host very likely backs it). Blocks from
//           boot, from the balloon or from reporting are cold. ORed when buddies merge.
enum PageFlag : uint8_t {
  kPageHead = 1u << 0,
  kPageZeroed = 1u << 1,
  kPageWarm = 1u << 2,
};

struct PageInfo {
  uint32_t next;  // free-list link (global page index), kNoPage at the end
  uint32_t prev;
  uint32_t tag;   // free for the owner of an allocated page (the heap keeps its slab class here)
  uint8_t order;  // block order, valid on heads
  Owner owner;    // valid on heads
  uint8_t flags;  // PageFlag bits
  uint8_t range;  // index of the memory range holding this page
};
static_assert(sizeof(PageInfo) == 16);

constexpr uint32_t kNoPage = 0xffffffffu;

// A run of physically contiguous pages, as exchanged with the balloon and reporting.
struct PageRun {
  PhysAddr base;
  uint64_t pages;
};

// A usable RAM range from the firmware memory map: the boot code's own type, so that
// mm::init(boot_info.ram, boot_info.ram_count, ...) needs no conversion.
using MemoryRange = ::blimp::MemoryRange;

// Allocation flags, ORed.
//   Zero:       return zeroed memory; blocks known to be zero are not written again.
//   NoOomHook:  do not call the OOM handler (the balloon uses it for its own buffers, so that an
//               allocation made while deflating does not recurse into deflating).
//   NoReclaim:  neither shrinkers nor the OOM handler: for code holding locks that a shrinker
//               might take. Fails fast. Implied when interrupts are masked.
//   PreferCold: take the coldest block (reported first). For memory the guest will not touch soon.
//   PreferWarm: take the most recently freed block. The default for every allocation.
enum AllocFlags : uint32_t {
  kAllocNone = 0,
  kAllocZero = 1u << 0,
  kAllocNoOomHook = 1u << 1,
  kAllocNoReclaim = 1u << 2,
  kAllocPreferCold = 1u << 3,
  kAllocPreferWarm = 1u << 4,
};
constexpr AllocFlags operator|(AllocFlags a, AllocFlags b) {
  return static_cast<AllocFlags>(static_cast<uint32_t>(a) | static_cast<uint32_t>(b));
}

constexpr uint64_t pages_of_order(unsigned order) { return uint64_t{1} << order; }
constexpr uint64_t bytes_of_order(unsigned order) { return kPageSize << order; }

// Smallest order whose block holds `pages` pages.
constexpr unsigned order_for_pages(uint64_t pages) {
  unsigned o = 0;
  while ((uint64_t{1} << o) < pages) ++o;
  return o;
}

}  // namespace blimp::mm
