#include "mm/page_states/volatile_memory.h"

#include "mm/mm.h"

namespace blimp::mm::page_states {

ErrorOr<VolatileRegion> allocate_volatile(uint64_t pages) {
  return allocate_volatile(pages, mm::pages(), active());
}

ErrorOr<VolatileRegion> allocate_volatile(uint64_t pages, PageAllocator& pa,
                                          PageStateArray* states) {
  if (pages == 0) return Error::InvalidArgument;
  // The state hook marks the run VOLATILE as it leaves the free lists; pin it straight away so
  // the caller gets it the way every later use gets it: pinned. Whatever the pin says, the
  // content is undefined (fresh memory).
  PhysAddr base = TRY(pa.alloc_run(pages, Owner::Volatile));
  VolatileRegion r;
  r.data = phys_to_virt(base);
  r.pages = pages;
  r.allocator = &pa;
  r.states = states;
  if (states) states->pin_range(base, pages, nullptr);
  return r;
}

PinResult pin(const VolatileRegion& r, uint64_t* lost_pages) {
  if (lost_pages) *lost_pages = 0;
  if (!r.states) return PinResult::Intact;
  bool intact = r.states->pin_range(virt_to_phys(r.data), r.pages, lost_pages);
  return intact ? PinResult::Intact : PinResult::Lost;
}

void unpin(const VolatileRegion& r) {
  if (r.states) r.states->unpin_range(virt_to_phys(r.data), r.pages);
}

void free_volatile(VolatileRegion& r) {
  if (!r.valid()) return;
  // The hook turns every byte (STABLE, VOLATILE or DISCARDED_VOLATILE) into UNUSED.
  r.allocator->free_run(virt_to_phys(r.data), r.pages);
  r = VolatileRegion{};
}

}  // namespace blimp::mm::page_states
