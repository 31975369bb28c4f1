// Background allocator churn (issue 17): with `smp.background=churn` every application processor
// that has no thread to run keeps allocating, filling, checking and freeing pages for as long as
// the VM runs, so that the balloon, free page reporting, hinting, page-state sweeps and sharing
// are tested against an allocator that every CPU is using at once, and a page any of them takes
// or discards while a CPU still holds it shows up as changed contents instead of going unnoticed.
//
// One BackgroundChurn per CPU, driven by that CPU only (not thread-safe; the allocator it uses
// is). It holds at most kSlots blocks in a ring: each step() checks and frees the oldest block
// when the ring is full, then allocates a new one (orders 0 to kMaxOrder, mostly 0, so both the
// per-CPU caches and the global lock are in play) and fills every word of it with a pattern of
// (worker, sequence, address, word). A block whose contents changed while it was held is a lost
// or corrupted page: step() returns the first such word and the churn's owner stops the VM.
//
// Memory: at most kSlots * 2^kMaxOrder pages per CPU (1 MiB) are held. An allocation that fails
// (the churn runs on an AP, where allocations never reclaim: kAllocNoReclaim) checks and frees
// every block held and makes the next kBackoffSteps steps do nothing, so a guest under memory
// pressure gets the churn's memory back at once and keeps it for a while.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mm/page_allocator.h"

namespace blimp::mm {

struct ChurnMismatch {
  PhysAddr block = 0;
  unsigned order = 0;
  uint64_t word = 0;  // index of the first bad 64-bit word in the block
  uint64_t expected = 0;
  uint64_t found = 0;
};

struct ChurnCounters {
  uint64_t allocated = 0;  // blocks allocated and filled
  uint64_t checked = 0;    // blocks checked and freed
  uint64_t failed = 0;     // allocations that found no memory
};

class BackgroundChurn {
 public:
  static constexpr size_t kSlots = 32;
  static constexpr unsigned kMaxOrder = 3;
  static constexpr uint32_t kBackoffSteps = 1024;

  BackgroundChurn(PageAllocator& pa, uint64_t worker) : pa_(pa), worker_(worker) {}
  BackgroundChurn(const BackgroundChurn&) = delete;
  BackgroundChurn& operator=(const BackgroundChurn&) = delete;

  // One allocation (and, with a full ring, one check and free; with no memory, every block
  // checked and freed), or nothing while backing off. False when a block
  // held by the churn was found changed; `bad` then says where, and the block is not freed (its
  // page is evidence, and freeing a page someone else may own could only spread the damage).
  bool step(ChurnMismatch& bad);

  // Checks and frees every block held. False on the first changed block (as step()).
  bool release_all(ChurnMismatch& bad);

  const ChurnCounters& counters() const { return counters_; }
  size_t held() const { return count_; }

  // The word a block holds at `index` (exposed for tests that damage a block on purpose).
  static uint64_t pattern(uint64_t worker, uint64_t seq, PhysAddr block, uint64_t index) {
    // Worker in the top byte, sequence below it, address and word index folded in with odd
    // multipliers: a stale block from an earlier round, another worker's block or a page moved
    // to another address never matches.
    return (worker << 56) ^ (seq * 0x9e3779b97f4a7c15ull) ^ block ^ (index * 0xff51afd7ed558ccdull);
  }

 private:
  struct Slot {
    PhysAddr block;
    uint64_t seq;
    unsigned order;
  };
  bool check_and_free_oldest(ChurnMismatch& bad);
  unsigned next_order();

  PageAllocator& pa_;
  uint64_t worker_;
  uint64_t seq_ = 0;
  Slot slots_[kSlots] = {};
  size_t head_ = 0;  // oldest
  size_t count_ = 0;
  uint32_t backoff_ = 0;  // steps left to skip after running out of memory
  ChurnCounters counters_;
};

// Guest only (mm/background_load.cpp): reads `smp.background=` (off, the default; spin; churn)
// and gives every online AP that idle work (kernel/threads.h, set_idle_step). `spin` keeps the
// CPUs computing without touching memory; `churn` runs a BackgroundChurn per AP, and a changed
// block panics the VM with the block, word and both values. A bad value prints the choices and
// leaves the APs halting. Called once, after smp::start.
void start_background_load();

}  // namespace blimp::mm
