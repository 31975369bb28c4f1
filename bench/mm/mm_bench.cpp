// Host benchmark: page allocator throughput (4 KiB and 2 MiB blocks) through the same loop the
// guest runs (mm::run_alloc_benchmark), with and without a page-state hook, plus heap small-object
// throughput. Usage: mm_bench [arena MiB] [rounds]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "mm/bench.h"
#include "mm/heap.h"
#include "mm/page_allocator.h"

using namespace blimp;
using namespace blimp::mm;

namespace {

uint64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// What the CMM2 page-state array costs: one byte per page written on every transition.
struct StateBytes {
  PhysAddr base;
  std::vector<uint8_t> bytes;
  static bool hook(PhysAddr first, size_t count, Owner o, void* ctx) {
    auto* s = static_cast<StateBytes*>(ctx);
    std::memset(&s->bytes[(first - s->base) / kPageSize], is_free_owner(o) ? 1 : 0, count);
    return false;
  }
};

void heap_bench(PageAllocator& pa, size_t size, unsigned rounds) {
  Heap heap(pa);
  constexpr size_t kBatch = 10000;
  std::vector<void*> v(kBatch);
  uint64_t alloc_ns = 0, free_ns = 0;
  for (unsigned r = 0; r < rounds; ++r) {
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < kBatch; ++i) v[i] = heap.alloc(size);
    uint64_t t1 = now_ns();
    for (size_t i = 0; i < kBatch; ++i) heap.free(v[i]);
    uint64_t t2 = now_ns();
    alloc_ns += t1 - t0;
    free_ns += t2 - t1;
  }
  double ops = double(kBatch) * rounds;
  std::fprintf(stderr, "heap %5zu B: alloc %.1f ns, free %.1f ns\n", size, alloc_ns / ops,
               free_ns / ops);
  heap.trim();
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : 1024;
  unsigned rounds = argc > 2 ? std::atoi(argv[2]) : 50;
  uint64_t size = mib << 20;
  auto* mem = static_cast<uint8_t*>(std::aligned_alloc(4 << 20, size));
  std::memset(mem, 0, size);  // fault the arena in: measure the allocator, not the host
  MemoryRange r{reinterpret_cast<PhysAddr>(mem), size};
  PageAllocator pa;
  if (pa.init(&r, 1).is_error()) return 1;
  std::fprintf(stderr, "arena %llu MiB, %u rounds, batch 4096 (2 MiB: a quarter of free memory)\n",
               (unsigned long long)mib, rounds);
  std::fprintf(stderr, "-- no state hook\n");
  print_alloc_benchmark(run_alloc_benchmark(pa, now_ns, rounds, 4096));
  StateBytes sb{r.base, std::vector<uint8_t>(size / kPageSize, 1)};
  pa.set_state_hook(&StateBytes::hook, &sb);
  std::fprintf(stderr, "-- with a page-state byte array hook\n");
  print_alloc_benchmark(run_alloc_benchmark(pa, now_ns, rounds, 4096));
  pa.set_state_hook(nullptr);
  for (size_t s : {16, 64, 256, 2048, 16384}) heap_bench(pa, s, rounds / 5 + 1);
  if (!pa.check_invariants()) return 1;
  std::free(mem);
  return 0;
}
