#include "mm/sharing/seal_registry.h"

namespace blimp::mm::sharing {

size_t SealRegistry::lower(uint64_t pfn) const {
  size_t lo = 0, hi = n_;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (r_[mid].pfn + r_[mid].pages <= pfn)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

bool SealRegistry::contains(uint64_t pfn) const {
  size_t i = lower(pfn);
  return i < n_ && r_[i].pfn <= pfn;
}

uint64_t SealRegistry::overlap(uint64_t pfn, uint64_t pages) const {
  uint64_t end = pfn + pages, total = 0;
  for (size_t i = lower(pfn); i < n_ && r_[i].pfn < end; i++) {
    uint64_t s = r_[i].pfn > pfn ? r_[i].pfn : pfn;
    uint64_t e = r_[i].pfn + r_[i].pages < end ? r_[i].pfn + r_[i].pages : end;
    total += e - s;
  }
  return total;
}

ErrorOr<void> SealRegistry::insert(uint64_t pfn, uint64_t pages) {
  if (pages == 0 || pfn + pages < pfn) return Error::InvalidArgument;
  if (overlap(pfn, pages)) return Error::InvalidArgument;
  // i: first range after the new one (no overlap, so lower() finds the first range past pfn).
  size_t i = lower(pfn);
  bool join_prev = i > 0 && r_[i - 1].pfn + r_[i - 1].pages == pfn;
  bool join_next = i < n_ && r_[i].pfn == pfn + pages;
  if (join_prev && join_next) {
    r_[i - 1].pages += pages + r_[i].pages;
    for (size_t j = i; j + 1 < n_; j++) r_[j] = r_[j + 1];
    n_--;
  } else if (join_prev) {
    r_[i - 1].pages += pages;
  } else if (join_next) {
    r_[i].pfn = pfn;
    r_[i].pages += pages;
  } else {
    if (n_ == kMaxRanges) return Error::LimitReached;
    for (size_t j = n_; j > i; j--) r_[j] = r_[j - 1];
    r_[i] = Range{pfn, pages};
    n_++;
  }
  pages_ += pages;
  return {};
}

ErrorOr<uint64_t> SealRegistry::remove(uint64_t pfn, uint64_t pages, RemovedFn fn, void* ctx) {
  if (pages == 0) return uint64_t{0};
  uint64_t end = pfn + pages < pfn ? ~uint64_t{0} : pfn + pages;
  size_t i = lower(pfn);
  if (i < n_ && r_[i].pfn < pfn && r_[i].pfn + r_[i].pages > end && n_ == kMaxRanges)
    return Error::LimitReached;  // would split one range in two
  uint64_t removed = 0;
  while (i < n_ && r_[i].pfn < end) {
    Range& r = r_[i];
    uint64_t rend = r.pfn + r.pages;
    uint64_t s = r.pfn > pfn ? r.pfn : pfn;
    uint64_t e = rend < end ? rend : end;
    if (fn) fn(s, e - s, ctx);
    removed += e - s;
    if (s == r.pfn && e == rend) {  // whole range
      for (size_t j = i; j + 1 < n_; j++) r_[j] = r_[j + 1];
      n_--;
      continue;
    }
    if (s == r.pfn) {  // head
      r.pfn = e;
      r.pages = rend - e;
    } else if (e == rend) {  // tail
      r.pages = s - r.pfn;
    } else {  // middle: split
      for (size_t j = n_; j > i + 1; j--) r_[j] = r_[j - 1];
      r_[i + 1] = Range{e, rend - e};
      r.pages = s - r.pfn;
      n_++;
    }
    i++;
  }
  pages_ -= removed;
  return removed;
}

}  // namespace blimp::mm::sharing
