// The page allocator's throughput loop, shared by the host benchmark (bench/mm) and the in-guest
// benchmark app, so both measure exactly the same thing.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mm/page_allocator.h"

namespace blimp::mm {

struct AllocBenchFigures {
  unsigned order;
  uint64_t ops;       // blocks allocated (and freed) in the batch phase
  uint64_t alloc_ns;  // total time in alloc_pages, batch phase
  uint64_t free_ns;   // total time in free_pages, batch phase
  uint64_t pair_ops;  // alloc immediately followed by free
  uint64_t pair_ns;
};

struct AllocBenchResult {
  AllocBenchFigures single;  // order 0 (4 KiB)
  AllocBenchFigures huge;    // order 9 (2 MiB)
  bool ok;                   // false if the scratch array could not be allocated
};

using BenchClock = uint64_t (*)();

// For each of order 0 and 9: `rounds` times, allocate up to `batch` blocks (at most a quarter of
// free memory) and free them all, timing both phases; then as many alloc+free pairs. Allocations
// pass kAllocNoReclaim so the benchmark never triggers shrinkers or the balloon.
// Guest: run_alloc_benchmark(mm::pages(), timer::now_ns, 20, 4096).
AllocBenchResult run_alloc_benchmark(PageAllocator& pa, BenchClock now_ns, unsigned rounds,
                                     size_t batch);
// One line per order on the console: ns per alloc/free/pair and thousands of blocks per second.
void print_alloc_benchmark(const AllocBenchResult& r);

// One worker of the multi-CPU benchmark (app=mmbench threads=N): every worker runs this loop
// against the same allocator at once, so it measures the allocator under contention and checks
// it at the same time.
struct AllocWorkerFigures {
  uint64_t ops;        // blocks allocated and freed
  uint64_t start_ns;   // the loop's first allocation
  uint64_t end_ns;     // after its last free
  uint64_t bad_tags;   // blocks whose tag did not survive until their free
  uint64_t failed;     // allocations that failed
  PhysAddr first_bad;  // the first such block (0: none)
};

// Rounds of `batch` blocks of `order` until now_ns() reaches end_ns (read once per round):
// allocate every block of the round (kAllocNoReclaim) and write a tag into its first and last
// word, then check both words and free the block. The tag mixes `worker`, the block's address
// and a per-worker sequence number, so a block handed to two workers at once, or reused while
// still allocated, is caught by the one whose tag was overwritten. `scratch` holds `batch`
// addresses. Allocations that fail are counted and end the round early: the loop never spins on
// an empty allocator. May run on any CPU (kernel/threads.h: no printing here).
AllocWorkerFigures run_alloc_worker(PageAllocator& pa, BenchClock now_ns, unsigned order,
                                    size_t batch, PhysAddr* scratch, uint64_t worker,
                                    uint64_t end_ns);

}  // namespace blimp::mm
