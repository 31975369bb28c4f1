// The balloon's demand on the app's caches: one record of what was asked, what the caches gave,
// and how it ended. The page allocator keeps it (PageAllocator::post_cache_demand and what
// follows it); the balloon reads it, and nobody infers its state from anything else.
//
// Why a demand at all: the balloon could not reach its target from free memory, and the caches
// (shrinkers) count as available memory. It cannot shrink them itself (its work runs after
// interrupts, between any two instructions of the app, and shrinkers are not reentrant), so it
// asks; the app's own allocating contexts shrink them for it (docs/mm.md).
//
// Its life:
//   post_cache_demand                                       -> Pending (in force)
//   a round: the caches gave pages, or free memory was there -> Served (in force; more rounds)
//   a round: the caches were asked and gave nothing          -> Exhausted (dropped)
//   end_cache_demand (the balloon re-plans): Pending, Served -> Withdrawn; the others stay
//   forget_cache_demand (the host set a new target)          -> None
#pragma once

#include <cstdint>

namespace blimp::mm {

enum class CacheDemandOutcome : uint8_t {
  None,       // nothing asked since the balloon last forgot a demand
  Pending,    // asked, in force; no shrink round has run for it yet
  Served,     // in force; a round left the demand's free memory there (partial progress counts:
              // the app keeps allocating, so an exact figure may never be met) and told the balloon
  Exhausted,  // a round found the caches empty: the allocator dropped the demand and told the
              // balloon (which does not ask again until the host sets a new target)
  Withdrawn,  // the balloon ended it to re-plan from the free memory there is
};

struct CacheDemand {
  uint64_t asked_pages = 0;  // free pages the balloon wants kept (its floor included)
  uint64_t given_pages = 0;  // pages the caches freed for it, over all its rounds
  CacheDemandOutcome outcome = CacheDemandOutcome::None;

  // While in force, an allocation that may reclaim keeps asked_pages free, shrinking the caches
  // first if it has to; allocations that cannot reclaim ignore it.
  constexpr bool in_force() const {
    return outcome == CacheDemandOutcome::Pending || outcome == CacheDemandOutcome::Served;
  }
};

}  // namespace blimp::mm
