// The balloon's statistics answer, built from the allocator's real numbers.
#pragma once

#include <cstddef>

#include "drivers/balloon/balloon_protocol.h"
#include "mm/stats.h"

namespace blimp::balloon {

constexpr size_t kMaxStats = 16;

// Fills `out` (kMaxStats entries) and returns how many it wrote. Every tag 0-15 is present; the
// Linux extensions 10-15 mean: OOM kills = allocations that failed after all reclaim, allocation
// stalls = allocations that entered the reclaim slow path, direct scans/reclaims = pages asked
// of / given back by shrinkers (a host sees a guest whose caches are being squeezed by these,
// while its available memory still looks ample). MEMTOT excludes the balloon, as Linux's totalram
// does, so that total - free is what the guest really uses.
size_t build_stats(const mm::MemoryStats& s, StatEntry* out);

}  // namespace blimp::balloon
