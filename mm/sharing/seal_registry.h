// Bookkeeping of sealed pages: a sorted array of disjoint, non-adjacent PFN ranges (adjacent
// seals coalesce). Fixed capacity, no allocation. Host-compilable; not locked (the caller is).
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/error.h"

namespace blimp::mm::sharing {

class SealRegistry {
 public:
  static constexpr size_t kMaxRanges = 1024;

  struct Range {
    uint64_t pfn;
    uint64_t pages;
  };
  using RemovedFn = void (*)(uint64_t pfn, uint64_t pages, void* ctx);

  // Records [pfn, pfn + pages) as sealed. InvalidArgument if empty or if any page is sealed
  // already (nothing changes then); LimitReached if it needs a slot and none is left.
  ErrorOr<void> insert(uint64_t pfn, uint64_t pages);
  // Forgets every sealed page in [pfn, pfn + pages), calling `fn` for each removed piece (in
  // ascending order). Returns the pages removed (0: none was sealed). LimitReached (and nothing
  // changes) if removing the middle of a range needs a slot and none is left.
  ErrorOr<uint64_t> remove(uint64_t pfn, uint64_t pages, RemovedFn fn = nullptr,
                           void* ctx = nullptr);

  bool contains(uint64_t pfn) const;
  // Sealed pages in [pfn, pfn + pages).
  uint64_t overlap(uint64_t pfn, uint64_t pages) const;
  uint64_t sealed_pages() const { return pages_; }
  size_t range_count() const { return n_; }
  const Range& range(size_t i) const { return r_[i]; }

 private:
  // First range whose end is > pfn.
  size_t lower(uint64_t pfn) const;

  Range r_[kMaxRanges] = {};
  size_t n_ = 0;
  uint64_t pages_ = 0;
};

}  // namespace blimp::mm::sharing
