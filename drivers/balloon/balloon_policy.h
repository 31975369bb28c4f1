// How far the balloon may go: pure arithmetic, unit-tested on the host.
//
// The host asks for a target; the guest gives what it safely can. A floor of free memory stays
// with the guest (for the kernel heap, device buffers and the app's next allocations) so that an
// over-eager host cannot starve the guest: the allocation path can still deflate on OOM, but a
// guest with no free memory at all could not even run that path well.
#pragma once

#include <cstdint>

namespace blimp::balloon {

struct InflatePlan {
  uint64_t pages;  // to inflate now
  bool limited;    // the target asked for more than the floor allows
};

// target/actual: balloon sizes in pages; free: free pages now; floor: free pages to keep.
constexpr InflatePlan plan_inflate(uint64_t target, uint64_t actual, uint64_t free,
                                   uint64_t floor) {
  if (target <= actual) return {0, false};
  uint64_t want = target - actual;
  uint64_t can = free > floor ? free - floor : 0;
  return want <= can ? InflatePlan{want, false} : InflatePlan{can, true};
}

// The default floor: 1/32 of RAM, at least 8 MiB and at most 64 MiB (in pages).
constexpr uint64_t default_floor_pages(uint64_t total_pages) {
  uint64_t floor = total_pages / 32;
  constexpr uint64_t kMin = (8ull << 20) >> 12, kMax = (64ull << 20) >> 12;
  return floor < kMin ? kMin : floor > kMax ? kMax : floor;
}

// Pages to deflate for an allocation that failed needing `needed` pages: at least 16 MiB, so a
// streak of small allocations does not take one OOM round trip each, and never more than held.
constexpr uint64_t plan_oom_deflate(uint64_t needed, uint64_t held) {
  constexpr uint64_t kMinStep = (16ull << 20) >> 12;
  uint64_t want = needed > kMinStep ? needed : kMinStep;
  return want < held ? want : held;
}

}  // namespace blimp::balloon
