#include "drivers/balloon/pfn_list.h"

#include "drivers/balloon/balloon_protocol.h"

namespace blimp::balloon {

size_t PfnCursor::fill(uint32_t* out, size_t max) {
  size_t n = 0;
  while (n < max && run_ < n_) {
    const mm::PageRun& r = runs_[run_];
    if (offset_ == r.pages) {
      run_++;
      offset_ = 0;
      continue;
    }
    uint64_t pfn = (r.base >> kBalloonPageShift) + offset_;
    offset_++;
    if (pfn > 0xffffffffull) {
      unrepresentable_++;
      continue;
    }
    out[n++] = static_cast<uint32_t>(pfn);
  }
  while (run_ < n_ && offset_ == runs_[run_].pages) {
    run_++;
    offset_ = 0;
  }
  return n;
}

bool SegmentCursor::done() {
  while (run_ < n_ && offset_ == runs_[run_].pages) {
    run_++;
    offset_ = 0;
  }
  return run_ == n_;
}

bool SegmentCursor::next(mm::PageRun& out) {
  if (done()) return false;
  const mm::PageRun& r = runs_[run_];
  uint64_t left = r.pages - offset_;
  uint64_t take = left < max_pages_ ? left : max_pages_;
  out = {r.base + (offset_ << kBalloonPageShift), take};
  offset_ += take;
  return true;
}

RunSet::~RunSet() {
  while (tail_) {
    Chunk* prev = tail_->prev;
    free_(tail_, ctx_);
    tail_ = prev;
  }
}

mm::PageRun* RunSet::last() { return in_tail_ ? &tail_->runs[in_tail_ - 1] : nullptr; }

bool RunSet::push(const mm::PageRun& run) {
  if (run.pages == 0) return true;
  if (mm::PageRun* l = last(); l && l->base + l->pages * 4096 == run.base) {
    l->pages += run.pages;
    pages_ += run.pages;
    return true;
  }
  if (!tail_ || in_tail_ == kRunsPerChunk) {
    auto* c = static_cast<Chunk*>(alloc_(ctx_));
    if (!c) return false;
    c->prev = tail_;
    tail_ = c;
    in_tail_ = 0;
  }
  tail_->runs[in_tail_++] = run;
  count_++;
  pages_ += run.pages;
  return true;
}

size_t RunSet::pop(uint64_t max_pages, mm::PageRun* out, size_t max_runs) {
  size_t written = 0;
  while (max_pages && written < max_runs && tail_) {
    if (in_tail_ == 0) {
      Chunk* prev = tail_->prev;
      free_(tail_, ctx_);
      tail_ = prev;
      in_tail_ = tail_ ? kRunsPerChunk : 0;
      continue;
    }
    mm::PageRun& r = tail_->runs[in_tail_ - 1];
    uint64_t take = r.pages < max_pages ? r.pages : max_pages;
    // Take from the end of the run so the remainder keeps its base.
    out[written++] = {r.base + (r.pages - take) * 4096, take};
    r.pages -= take;
    pages_ -= take;
    max_pages -= take;
    if (r.pages == 0) {
      in_tail_--;
      count_--;
    }
  }
  if (tail_ && in_tail_ == 0) {
    Chunk* prev = tail_->prev;
    free_(tail_, ctx_);
    tail_ = prev;
    in_tail_ = tail_ ? kRunsPerChunk : 0;
  }
  return written;
}

}  // namespace blimp::balloon
