// Test helpers: an aligned host arena standing in for guest RAM, and an allocator over it.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "mm/page_allocator.h"

namespace blimp::mm::test {

constexpr uint64_t kMiB = 1ull << 20;

struct Arena {
  explicit Arena(uint64_t size, uint64_t align = 4 * kMiB) : size(size) {
    mem = static_cast<uint8_t*>(std::aligned_alloc(align, size));
    // Garbage, like RAM after firmware: nothing may assume fresh memory is zero.
    std::memset(mem, 0xa5, size);
  }
  ~Arena() { std::free(mem); }
  Arena(const Arena&) = delete;
  PhysAddr base() const { return reinterpret_cast<PhysAddr>(mem); }
  PhysAddr end() const { return base() + size; }
  uint64_t size;
  uint8_t* mem;
};

// One allocator over one arena.
struct Fixture {
  explicit Fixture(uint64_t size) : arena(size) {
    MemoryRange r{arena.base(), arena.size};
    auto ok = pa->init(&r, 1);
    if (ok.is_error()) std::abort();
    pa->set_reporting_reserve(0);
  }
  Arena arena;
  std::unique_ptr<PageAllocator> pa = std::make_unique<PageAllocator>();
};

// Fills a block with a pattern derived from its address and a seed, and checks it.
inline void fill(PhysAddr a, uint64_t pages, uint64_t seed) {
  auto* w = reinterpret_cast<uint64_t*>(a);
  // First and last word of each page: enough to catch overlap, cheap enough under ASan.
  for (uint64_t p = 0; p < pages; ++p) {
    w[p * 512] = a ^ seed ^ p;
    w[p * 512 + 511] = ~(a ^ seed ^ p);
  }
}
inline bool check(PhysAddr a, uint64_t pages, uint64_t seed) {
  auto* w = reinterpret_cast<uint64_t*>(a);
  for (uint64_t p = 0; p < pages; ++p) {
    if (w[p * 512] != (a ^ seed ^ p) || w[p * 512 + 511] != ~(a ^ seed ^ p)) return false;
  }
  return true;
}

// Free blocks per order: after everything is freed it must equal the count right after init,
// which proves full coalescing.
inline std::vector<uint64_t> free_shape(PageAllocator& pa) {
  std::vector<uint64_t> v;
  for (unsigned o = 0; o <= kMaxOrder; ++o) v.push_back(pa.free_block_count(o));
  return v;
}

}  // namespace blimp::mm::test
