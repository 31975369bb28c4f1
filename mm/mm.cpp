#include "mm/mm.h"

#include "kernel/console.h"
#include "kernel/panic.h"
#include "mm/heap.h"

namespace blimp::mm {

namespace {
// Constant-initialized: usable before (and without) running global constructors.
constinit PageAllocator g_pages;
constinit Heap g_heap{g_pages};
}  // namespace

void init(const MemoryRange* usable, size_t n, PhysAddr kernel_end) {
  constexpr PhysAddr kLowLimit = 1ull << 20;
  PhysAddr floor = kernel_end > kLowLimit ? kernel_end : kLowLimit;
  MemoryRange trimmed[PageAllocator::kMaxRanges];
  size_t m = 0;
  for (size_t i = 0; i < n && m < PageAllocator::kMaxRanges; ++i) {
    PhysAddr base = usable[i].base;
    PhysAddr end = base + usable[i].size;
    if (end <= floor) continue;
    if (base < floor) base = floor;
    trimmed[m++] = MemoryRange{base, end - base};
  }
  auto r = g_pages.init(trimmed, m, /*untouched_is_unbacked=*/true);
  if (r.is_error()) panic("mm: cannot initialize the page allocator: %s", error_name(r.error()));
  MemoryStats s = g_pages.stats();
  kprintf("mm: %llu MiB managed in %zu ranges, %llu KiB of page metadata\n",
          (unsigned long long)(s.total_bytes >> 20), m,
          (unsigned long long)(s.reserved_bytes >> 10));
}

bool initialized() { return g_pages.initialized(); }
PageAllocator& pages() { return g_pages; }
Heap& heap() { return g_heap; }

}  // namespace blimp::mm
