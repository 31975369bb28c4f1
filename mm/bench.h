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

}  // namespace blimp::mm
