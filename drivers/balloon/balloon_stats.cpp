#include "drivers/balloon/balloon_stats.h"

#include "kernel/memory.h"

namespace blimp::balloon {

size_t build_stats(const mm::MemoryStats& s, StatEntry* out) {
  size_t n = 0;
  auto put = [&](StatTag tag, uint64_t value) { out[n++] = StatEntry{tag, value}; };
  // Units as Linux's update_balloon_stats sends them (and QEMU 9.2, Firecracker and libvirt pass
  // them on): SWAP_IN/OUT and the four scan/reclaim tags (12-15) in bytes, the fault, HugeTLB,
  // OOM and stall tags (2, 3, 8-11) as event counts, the memory tags (4-7) in bytes.
  auto bytes = [](uint64_t pages) { return pages * kPageSize; };
  put(kStatSwapIn, bytes(s.swap_in));
  put(kStatSwapOut, bytes(s.swap_out));
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
  put(kStatDirectScans, bytes(s.direct_scan_pages));
  put(kStatAsyncReclaims, 0);
  put(kStatDirectReclaims, bytes(s.direct_reclaim_pages));
  return n;
}

}  // namespace blimp::balloon
