#include "mm/heap.h"

#include <gtest/gtest.h>

#include <stdexcept>

#include "arena.h"
#include "mm/mm.h"

namespace blimp::mm::test {
namespace {

struct HeapFixture : Fixture {
  HeapFixture() : Fixture(64 * kMiB), heap(*pa) {}
  Heap heap;
};

TEST(Heap, SizeClassesAndAlignment) {
  HeapFixture f;
  auto shape = free_shape(*f.pa);
  std::vector<void*> v;
  for (size_t size : {0ul, 1ul, 15ul, 16ul, 17ul, 100ul, 256ul, 511ul, 1000ul, 2048ul}) {
    void* p = f.heap.alloc(size);
    ASSERT_NE(p, nullptr);
    size_t cls = 16;
    while (cls < size) cls *= 2;
    EXPECT_EQ(f.heap.usable_size(p), cls) << size;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % cls, 0u) << size;
    std::memset(p, 0x3c, f.heap.usable_size(p));
    v.push_back(p);
  }
  for (size_t align : {32ul, 64ul, 256ul, 1024ul, 2048ul, 4096ul, 65536ul}) {
    void* p = f.heap.alloc(24, align);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % align, 0u) << align;
    std::memset(p, 0x3c, 24);
    v.push_back(p);
  }
  EXPECT_EQ(f.heap.alloc(16, 48), nullptr);  // not a power of two
  for (void* p : v) f.heap.free(p);
  f.heap.free(nullptr);
  f.heap.trim();
  HeapStats s = f.heap.stats();
  EXPECT_EQ(s.objects_in_use, 0u);
  EXPECT_EQ(s.large_in_use, 0u);
  EXPECT_EQ(s.slab_bytes, 0u);
  EXPECT_EQ(free_shape(*f.pa), shape);
  EXPECT_TRUE(f.pa->check_invariants());
}

TEST(Heap, LargeAllocations) {
  HeapFixture f;
  auto shape = free_shape(*f.pa);
  for (size_t size : {2049ul, 4000ul, 4096ul, 5000ul, 100000ul, 3ul << 20, 9ul << 20}) {
    void* p = f.heap.alloc(size);
    ASSERT_NE(p, nullptr) << size;
    EXPECT_GE(f.heap.usable_size(p), size);
    EXPECT_LT(f.heap.usable_size(p), size + kPageSize);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kPageSize, 0u);
    std::memset(p, 0x5a, size);
    f.heap.free(p);
  }
  void* z = f.heap.alloc_zeroed(1 << 20);
  for (size_t i = 0; i < (1 << 20); ++i) ASSERT_EQ(static_cast<uint8_t*>(z)[i], 0);
  f.heap.free(z);
  EXPECT_EQ(f.heap.alloc(100ul << 20), nullptr);  // more than the arena
  // Power-of-two sizes take exactly their buddy block: 1 MiB chunks fill memory completely.
  uint64_t free_before = f.pa->free_pages_count();
  std::vector<void*> chunks;
  while (void* c = f.heap.alloc(1 << 20)) chunks.push_back(c);
  EXPECT_EQ(chunks.size(), free_before / 256);
  for (void* c : chunks) f.heap.free(c);
  EXPECT_THROW(f.heap.free(static_cast<char*>(z) + 0), std::runtime_error);  // already freed
  EXPECT_EQ(f.heap.stats().failures, 2u);
  EXPECT_EQ(free_shape(*f.pa), shape);
}

TEST(Heap, Realloc) {
  HeapFixture f;
  char* p = static_cast<char*>(f.heap.realloc(nullptr, 10));
  std::memcpy(p, "0123456789", 10);
  p = static_cast<char*>(f.heap.realloc(p, 12));  // same class: same object
  EXPECT_EQ(f.heap.usable_size(p), 16u);
  char* q = static_cast<char*>(f.heap.realloc(p, 5000));
  EXPECT_EQ(std::memcmp(q, "0123456789", 10), 0);
  std::memset(q + 10, 'x', 4990);
  char* r = static_cast<char*>(f.heap.realloc(q, 3000000));
  EXPECT_EQ(std::memcmp(r, "0123456789", 10), 0);
  EXPECT_EQ(r[4999], 'x');
  char* s = static_cast<char*>(f.heap.realloc(r, 20));
  EXPECT_EQ(std::memcmp(s, "0123456789", 10), 0);
  EXPECT_EQ(f.heap.usable_size(s), 32u);
  EXPECT_EQ(f.heap.realloc(s, 0), nullptr);
  EXPECT_EQ(f.heap.stats().objects_in_use + f.heap.stats().large_in_use, 0u);
}

TEST(Heap, BadPointersPanic) {
  HeapFixture f;
  void* p = f.heap.alloc(64);
  EXPECT_THROW(f.heap.free(static_cast<char*>(p) + 8), std::runtime_error);
  PhysAddr page = f.pa->alloc_pages(0).value();
  EXPECT_THROW(f.heap.free(reinterpret_cast<void*>(page + 128)), std::runtime_error);
  f.heap.free(p);
  void* q = f.heap.alloc(64);
  f.heap.free(q);
  EXPECT_THROW(f.heap.free(q), std::runtime_error);  // the slab is empty: a double free
}

TEST(Heap, RandomizedWithPatterns) {
  HeapFixture f;
  auto shape = free_shape(*f.pa);
  std::mt19937_64 rng(42);
  struct Obj {
    uint8_t* p;
    size_t size;
    uint8_t v;
  };
  std::vector<Obj> live;
  for (int step = 0; step < 40000; ++step) {
    if (live.empty() || rng() % 100 < 52) {
      size_t size = rng() % 10 == 0 ? rng() % 20000 : rng() % 600;
      size_t align = size_t{16} << (rng() % 4);
      auto* p = static_cast<uint8_t*>(f.heap.alloc(size, align));
      ASSERT_NE(p, nullptr);
      ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % align, 0u);
      uint8_t v = static_cast<uint8_t>(rng());
      std::memset(p, v, size);
      live.push_back({p, size, v});
    } else {
      size_t i = rng() % live.size();
      Obj o = live[i];
      live[i] = live.back();
      live.pop_back();
      for (size_t k = 0; k < o.size; ++k) ASSERT_EQ(o.p[k], o.v) << "object corrupted";
      f.heap.free(o.p);
    }
  }
  for (auto& o : live) f.heap.free(o.p);
  f.heap.trim();
  EXPECT_EQ(f.heap.stats().slab_bytes, 0u);
  EXPECT_EQ(f.heap.stats().large_bytes, 0u);
  EXPECT_EQ(free_shape(*f.pa), shape);
  EXPECT_TRUE(f.pa->check_invariants());
}

// The global instance: mm::init excludes low memory and the kernel image, and the global heap
// functions work on top of it. (Once per process: the global cannot be re-initialized.)
TEST(Heap, GlobalInstance) {
  // The global allocator lives as long as the process, and so must its memory (and a repeated
  // run, --gtest_repeat, finds it initialized).
  static Arena& a = *new Arena(64 * kMiB);
  if (!mm::initialized()) {
    MemoryRange r[] = {{a.base() + 32 * kMiB, 32 * kMiB}, {a.base(), 16 * kMiB}};
    mm::init(r, 2, a.base() + 8 * kMiB);  // "kernel" ends at 8 MiB
  }
  ASSERT_TRUE(mm::initialized());
  EXPECT_FALSE(mm::pages().contains(a.base() + 8 * kMiB - 1));
  EXPECT_TRUE(mm::pages().contains(a.base() + 8 * kMiB));
  EXPECT_FALSE(mm::pages().contains(a.base() + 16 * kMiB));
  EXPECT_TRUE(mm::pages().contains(a.base() + 32 * kMiB));
  void* p = heap_alloc(100);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(heap_usable_size(p), 128u);
  p = heap_realloc(p, 10000);
  ASSERT_NE(p, nullptr);
  auto* z = static_cast<uint64_t*>(heap_calloc(1000, 8));
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(z[i], 0u);
  EXPECT_EQ(heap_calloc(SIZE_MAX / 2, 4), nullptr);
  heap_free(z);
  heap_free(p);
  EXPECT_TRUE(mm::pages().check_invariants());
}

}  // namespace
}  // namespace blimp::mm::test
