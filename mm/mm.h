// The guest's memory manager instance: one page allocator over all usable RAM, and the kernel
// heap on top of it.
#pragma once

#include <cstddef>

#include "kernel/memory.h"
#include "mm/page.h"
#include "mm/page_allocator.h"

namespace blimp::mm {

class Heap;

// Hands the usable RAM ranges of the firmware map (any order) to the page allocator, minus the
// first 1 MiB (BIOS data, real-mode structures) and everything below `kernel_end` (the image,
// its bss, the boot stack). Anything the boot code still needs above kernel_end must already be
// removed from `usable`. Panics if no memory is left: there is nothing sensible to run then.
void init(const MemoryRange* usable, size_t n, PhysAddr kernel_end);
bool initialized();

PageAllocator& pages();
Heap& heap();

}  // namespace blimp::mm
