#include "drivers/balloon/balloon_stats.h"

namespace blimp::balloon {

size_t build_stats(const mm::MemoryStats& s, StatEntry* out) {
  size_t n = 0;
  auto put = [&](StatTag tag, uint64_t value) { out[n++] = StatEntry{tag, value}; };
  put(kStatSwapIn, s.swap_in);
  put(kStatSwapOut, s.swap_out);
  put(kStatMajorFaults, s.major_faults);
  put(kStatMinorFaults, s.minor_faults);
  put(kStatFreeMemory, s.free_bytes);
  uint64_t total = s.total_bytes > s.balloon_bytes ? s.total_bytes - s.balloon_bytes : 0;
  put(kStatTotalMemory, total);
  put(kStatAvailableMemory, s.available_bytes);
  put(kStatDiskCaches, s.cache_bytes);
  put(kStatHugetlbAllocations, s.hugetlb_allocations);
  put(kStatHugetlbFailures, s.hugetlb_failures);
  put(kStatOomKills, s.alloc_failures);
  put(kStatAllocStalls, s.alloc_stalls);
  // Reclaim happens only in the allocating context (shrinkers, then the balloon's OOM deflate):
  // there is no background reclaimer, so the async counters are a true 0.
  put(kStatAsyncScans, 0);
  put(kStatDirectScans, s.direct_scan_pages);
  put(kStatAsyncReclaims, 0);
  put(kStatDirectReclaims, s.direct_reclaim_pages);
  return n;
}

}  // namespace blimp::balloon
