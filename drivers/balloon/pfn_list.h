// Runs of pages <-> the balloon's PFN arrays, and the set of runs the balloon holds.
//
// The inflate and deflate queues carry arrays of 32-bit page frame numbers (5.5.6.1), one per
// 4 KiB page. The allocator hands the balloon whole runs; PfnCursor walks them a buffer at a
// time. RunSet keeps what the balloon holds as a list of runs (adjacent runs merged), in storage
// that grows a page at a time from a caller-supplied allocator, because the balloon must keep
// working when memory is tight.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mm/page.h"

namespace blimp::balloon {

// Walks `runs` and emits their PFNs. A PFN above 2^32-1 (RAM beyond 16 TiB) cannot be expressed
// on this protocol: such pages are skipped and counted, and the caller gives them back.
class PfnCursor {
 public:
  PfnCursor(const mm::PageRun* runs, size_t n) : runs_(runs), n_(n) {}
  // Writes up to `max` PFNs; returns how many.
  size_t fill(uint32_t* out, size_t max);
  bool done() const { return run_ == n_; }
  uint64_t unrepresentable() const { return unrepresentable_; }

 private:
  const mm::PageRun* runs_;
  size_t n_;
  size_t run_ = 0;
  uint64_t offset_ = 0;  // pages into runs_[run_]
  uint64_t unrepresentable_ = 0;
};

// Walks `runs` and emits them as segments of at most `max_pages` pages each (a virtqueue
// descriptor's length is 32 bits, so a run longer than that goes out as several segments).
class SegmentCursor {
 public:
  SegmentCursor(const mm::PageRun* runs, size_t n, uint64_t max_pages)
      : runs_(runs), n_(n), max_pages_(max_pages ? max_pages : 1) {}
  // The next segment; false when all runs are out.
  bool next(mm::PageRun& out);
  bool done();

 private:
  const mm::PageRun* runs_;
  size_t n_;
  uint64_t max_pages_;
  size_t run_ = 0;
  uint64_t offset_ = 0;  // pages into runs_[run_]
};

class RunSet {
 public:
  // Storage provider: a zeroed page-sized block (4096 bytes) or nullptr; and its release.
  using AllocPage = void* (*)(void* ctx);
  using FreePage = void (*)(void* page, void* ctx);

  RunSet(AllocPage alloc, FreePage free, void* ctx) : alloc_(alloc), free_(free), ctx_(ctx) {}
  RunSet(const RunSet&) = delete;
  RunSet& operator=(const RunSet&) = delete;
  ~RunSet();

  // Appends a run, merging it with the last one when adjacent. False if storage ran out.
  bool push(const mm::PageRun& run);
  // Removes up to `max_pages` pages from the end (most recently added first), writing at most
  // `max_runs` runs to `out`. Returns the number of runs written.
  size_t pop(uint64_t max_pages, mm::PageRun* out, size_t max_runs);

  uint64_t pages() const { return pages_; }
  size_t runs() const { return count_; }

  // Calls f(const mm::PageRun&) for every run, most recently added first, without changing the
  // set; stops when f returns false. Returns false if it stopped early.
  template <typename F>
  bool for_each(F&& f) const {
    size_t in = in_tail_;
    for (const Chunk* c = tail_; c; c = c->prev, in = kRunsPerChunk)
      for (size_t i = in; i-- > 0;)
        if (!f(c->runs[i])) return false;
    return true;
  }

 private:
  static constexpr size_t kRunsPerChunk = (4096 - sizeof(void*)) / sizeof(mm::PageRun);
  struct Chunk {
    Chunk* prev;
    mm::PageRun runs[kRunsPerChunk];
  };
  static_assert(sizeof(Chunk) <= 4096);

  mm::PageRun* last();
  AllocPage alloc_;
  FreePage free_;
  void* ctx_;
  Chunk* tail_ = nullptr;
  size_t in_tail_ = 0;  // runs used in tail_
  size_t count_ = 0;
  uint64_t pages_ = 0;
};

}  // namespace blimp::balloon
