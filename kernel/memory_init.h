// Hands the firmware's usable RAM to the memory manager.
#pragma once

#include "kernel/boot/boot_info.h"

namespace blimp {

void init_memory(const BootInfo& boot);

// Early heap: a bump allocator over one RAM range, used by malloc until mm/ takes over.
void* early_heap_alloc(size_t size, size_t align);

}  // namespace blimp
