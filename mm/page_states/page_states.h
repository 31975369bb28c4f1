// Collaborative page states (CMM2 style): the guest side of docs/spec-virtio-balloon-blimp.md
// section 4, as described in docs/page-states.md.
//
// One byte per page frame, from PFN 0 up to the highest RAM page, in a physically contiguous
// array the guest allocates once and never frees, registered with the virtio-balloon device
// (PSTATE_REGISTER on blimpq) when the device offers VIRTIO_BALLOON_F_BLIMP_PAGE_STATES. The page
// allocator's state hook keeps the array current on every transition, under the allocator lock:
//
//   Free / Reported / Isolated / Balloon  -> UNUSED  (a discarded free page stays DISCARDED_UNUSED)
//   Kernel / App                          -> STABLE  (a page that was DISCARDED_x is known zero)
//   Volatile                              -> VOLATILE (apps pin it before use: volatile_memory.h)
//   Reserved (allocator metadata), holes  -> STABLE  (never written: zero-initialised)
//
// Page ages (spec section 4.5, PSTATE_AGES): beside the array, a stamp per page says since when it
// has been discardable: the guest clock (seconds) at which the page last became UNUSED (freed) or
// VOLATILE (allocated as volatile, or unpinned). The host reads the stamps to discard the coldest
// pages first and to count idle memory; it never writes them. Stamps are plain stores made before
// the state byte's release, so a host that sees the state also sees a stamp at least that new.
// A page that stays free (Free -> Reported -> Isolated) keeps the stamp of the moment it was freed.
//
// Against a stock QEMU (no feature bit) nothing is allocated, registered or hooked: init() only
// logs that page states are off.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/atomic.h"
#include "lib/blimp_wire.h"
#include "mm/page.h"
#include "mm/page_allocator.h"
#include "mm/page_states/protocol.h"

namespace blimp::mm {
class DeviceChannel;
}

namespace blimp::mm::page_states {

struct Stats {
  uint64_t array_pages;       // pages described (array length in bytes); 0 when off
  uint64_t transitions;       // hook calls
  uint64_t known_zero_pages;  // pages handed out that the host had discarded (zero, not zeroed)
  uint64_t discard_waits;     // pause iterations spent waiting on DISCARDING_x bytes
  uint64_t pins;              // volatile pins (per page)
  uint64_t pins_lost;         // pins that found the page discarded (content lost)
};

// The array and the allocator transitions over it. Host-compilable: tests build one over a
// plain buffer and a PageAllocator over an arena.
class PageStateArray {
 public:
  constexpr PageStateArray() = default;
  PageStateArray(const PageStateArray&) = delete;
  PageStateArray& operator=(const PageStateArray&) = delete;

  // Describes PFNs [base_pfn, base_pfn + npages) with the bytes at `bytes`.
  void attach(uint8_t* bytes, uint64_t base_pfn, uint64_t npages);
  // Writes every byte from the allocator's current state, then installs the state hook. The
  // caller keeps the allocator quiet meanwhile (init() masks interrupts, and runs at boot before
  // the app, when the APs sit idle: no thread exists yet).
  void sync_and_hook(PageAllocator& pa);
  void unhook(PageAllocator& pa);
  // Page ages: `header` (clock) and one stamp per page of the array, or nullptr to stop stamping.
  // Stamps start at the header's clock: every page counts as idle since then.
  void attach_ages(wire::BlimpAgeHeader* header, uint32_t* stamps);
  // Publishes the guest clock (seconds); later stamps carry it. The guest calls it every second.
  void set_clock(uint32_t clock_s);
  uint32_t clock() const { return ages_ ? __atomic_load_n(&ages_->clock_s, __ATOMIC_RELAXED) : 0; }
  const uint32_t* stamps() const { return stamps_; }

  // The state hook body (see StateHook in mm/page_allocator.h): called with the allocator lock
  // held. Returns true when every page of the range had been discarded by the host (reads as
  // zero) and is now leaving the free state.
  bool transition(PhysAddr first_page, size_t count, Owner new_owner);

  // The byte of `addr`'s page, or nullptr if the array does not describe it.
  volatile uint8_t* byte_of(PhysAddr addr) const {
    uint64_t pfn = addr >> kPageShift;
    if (!bytes_ || pfn < base_pfn_ || pfn - base_pfn_ >= npages_) return nullptr;
    return bytes_ + (pfn - base_pfn_);
  }
  uint8_t* bytes() const { return bytes_; }
  uint64_t base_pfn() const { return base_pfn_; }
  uint64_t npages() const { return npages_; }

  // Volatile pins on [first_page, +count): true when no page had been discarded. `lost` (if not
  // null) receives the number of pages that were.
  bool pin_range(PhysAddr first_page, uint64_t count, uint64_t* lost);
  void unpin_range(PhysAddr first_page, uint64_t count);

  Stats stats() const;

 private:
  static bool hook(PhysAddr first_page, size_t count, Owner new_owner, void* ctx);
  // Records that page `index` becomes discardable now (before its byte says so).
  void stamp(uint64_t index) {
    if (stamps_) stamps_[index] = __atomic_load_n(&ages_->clock_s, __ATOMIC_RELAXED);
  }

  uint8_t* bytes_ = nullptr;
  // Page ages (advisory, host-read-only). The clock is written by the timer callback and read by
  // stamp() under the allocator lock or from the app's pin/unpin: a 32-bit aligned store, so a
  // reader sees the old or the new second, either of which is a true enough stamp.
  wire::BlimpAgeHeader* ages_ = nullptr;
  uint32_t* stamps_ = nullptr;
  uint64_t base_pfn_ = 0;
  uint64_t npages_ = 0;
  // Under the allocator lock (transition() runs under it, on whichever CPU made the change);
  // stats() reads them without it: a snapshot, possibly a transition behind.
  uint64_t transitions_ = 0;
  uint64_t known_zero_ = 0;
  uint64_t waits_locked_ = 0;
  // Outside it.
  Atomic<uint64_t> waits_{0};
  Atomic<uint64_t> pins_{0};
  Atomic<uint64_t> pins_lost_{0};
};

// State a page gets for an owner (see the table above).
constexpr uint8_t state_for_owner(Owner o) {
  switch (o) {
    case Owner::Free:
    case Owner::Reported:
    case Owner::Isolated:
    case Owner::Balloon: return kUnused;
    case Owner::Volatile: return kVolatile;
    default: return kStable;
  }
}

// ---- the guest's instance
// ------------------------------------------------------------------------

// Allocates and initialises the array, installs the allocator's state hook and registers the
// array with the device through `channel` (mm/device_channel.h: the balloon, which kernel_main
// hands in), if it offers page states (otherwise, or with no channel, does nothing). Called once
// by kernel_main, after drivers::init(), from thread context; later calls do nothing. Kernel
// command line `page_states=off` disables it.
void init(DeviceChannel* channel);
// The active array (registered with the device), or nullptr.
PageStateArray* active();
Stats stats();

namespace detail {
// The guest's one array (constant-initialised) and the pointer active() returns; init() sets it.
PageStateArray& guest_array();
void set_active(PageStateArray* a);
}  // namespace detail

}  // namespace blimp::mm::page_states
