// Volatile memory for apps: recomputable data the host may take away at any time while it is not
// in use (CMM2's "volatile" pages). The protocol is in docs/page-states.md.
//
//   auto r = page_states::allocate_volatile(pages);    // returned PINNED, content undefined
//   fill(r.data);  page_states::unpin(r);              // now the host may discard it
//   ...
//   if (page_states::pin(r) == PinResult::Lost) fill(r.data);   // regenerate, it read as zeros
//   use(r.data);   page_states::unpin(r);
//   page_states::free_volatile(r);                     // pinned or not
//
// Rules: touch the data only between pin() and unpin() (unpin publishes every earlier write with
// release ordering); one pin at a time per region (pins do not nest); do not allocate
// Owner::Volatile memory with kAllocZero (the allocator would zero it after it became VOLATILE).
// A pin is per region: Lost means at least one page of it was discarded (those pages read as
// zeros, the others are intact; `lost_pages` says how many). Without a device that offers page
// states (stock QEMU), nothing is ever lost and pin/unpin cost a branch.
#pragma once

#include <cstdint>

#include "lib/error.h"
#include "mm/page_allocator.h"
#include "mm/page_states/page_states.h"

namespace blimp::mm::page_states {

enum class PinResult : uint8_t { Intact, Lost };

struct VolatileRegion {
  void* data = nullptr;
  uint64_t pages = 0;
  PageAllocator* allocator = nullptr;
  PageStateArray* states = nullptr;  // nullptr: page states are off, nothing is ever lost
  bool valid() const { return data != nullptr; }
};

// `pages` contiguous pages owned as Owner::Volatile, returned pinned. The guest's allocator and
// active array by default; tests pass their own.
ErrorOr<VolatileRegion> allocate_volatile(uint64_t pages);
ErrorOr<VolatileRegion> allocate_volatile(uint64_t pages, PageAllocator& pa,
                                          PageStateArray* states);
PinResult pin(const VolatileRegion& r, uint64_t* lost_pages = nullptr);
void unpin(const VolatileRegion& r);
void free_volatile(VolatileRegion& r);

}  // namespace blimp::mm::page_states
