// The balloon's statistics answer, built from the allocator's real numbers.
#pragma once

#include <cstddef>

#include "drivers/balloon/balloon_protocol.h"
#include "mm/stats.h"

namespace blimp::balloon {

constexpr size_t kMaxStats = 12;

// Fills `out` (kMaxStats entries) and returns how many it wrote. Every tag 0-9 is present; of
// the Linux extensions, those Blimp has a meaning for (OOM kills: allocations that failed after
// all reclaim; allocation stalls). MEMTOT excludes the balloon, as Linux's totalram does, so
// that total - free is what the guest really uses.
size_t build_stats(const mm::MemoryStats& s, StatEntry* out);

}  // namespace blimp::balloon
