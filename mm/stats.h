// Memory statistics, as the balloon's stats queue and the apps want them. All sizes in bytes
// unless the name says pages; counters are totals since boot.
#pragma once

#include <cstdint>

namespace blimp::mm {

struct MemoryStats {
  uint64_t total_bytes;      // managed RAM (excludes the allocator's own metadata)
  uint64_t free_bytes;       // on the free lists, plus isolated blocks the host is reporting
  uint64_t available_bytes;  // free + what shrinkers say they can give back
  uint64_t cache_bytes;      // sum of the shrinkers' count_objects()
  uint64_t balloon_bytes;    // held by the balloon (Owner::Balloon)
  uint64_t reported_bytes;   // free and reported to the host (discarded there)
  uint64_t isolated_bytes;   // isolated for reporting right now
  uint64_t kernel_bytes;
  uint64_t app_bytes;
  uint64_t volatile_bytes;
  uint64_t reserved_bytes;  // allocator metadata
  uint64_t percpu_bytes;    // free pages in the per-CPU caches (part of free_bytes)

  uint64_t alloc_stalls;           // allocations that had to enter the reclaim slow path
  uint64_t oom_events;             // calls to the OOM handler
  uint64_t oom_pages;              // pages the OOM handler said it gave back (balloon deflate)
  uint64_t alloc_failures;         // allocations that failed after all reclaim
  uint64_t direct_scan_pages;      // pages asked of shrinkers (the allocating context reclaims;
  uint64_t direct_reclaim_pages;   // there is no background reclaim: async scan/reclaim = 0)
  uint64_t balloon_reclaim_pages;  // pages the caches gave up for a balloon demand (not above)
  uint64_t allocations;            // successful alloc_pages/alloc_run calls
  uint64_t frees;
  uint64_t pages_taken;     // by take_pages (balloon inflate)
  uint64_t pages_returned;  // by give_back (balloon deflate)
  uint64_t pages_reported;  // total ever marked reported
  uint64_t zero_fills;      // pages zeroed by kAllocZero
  uint64_t zero_skips;      // pages not zeroed because they were known zero

  // A unikernel with an identity map and no swap never faults a page in: these balloon stats
  // tags (SWAP_IN/OUT, MAJFLT, MINFLT) and HugeTLB ones stay 0 by construction.
  uint64_t major_faults = 0;
  uint64_t minor_faults = 0;
  uint64_t swap_in = 0;
  uint64_t swap_out = 0;
  uint64_t hugetlb_allocations = 0;
  uint64_t hugetlb_failures = 0;
};

}  // namespace blimp::mm
