// The kernel heap: small objects from slabs, large ones straight from the page allocator. Backs
// operator new/delete and newlib's malloc family (routed here by libc-shim/).
//
// Size classes: 16, 32, 64, ..., 2048 bytes; every object is aligned to its class size (slabs are
// naturally aligned blocks and objects sit at multiples of the class size), so any alignment up to
// 2048 is served from a slab. A slab's header sits in its first object slot(s); its pages carry a
// tag (PageAllocator::set_tag) giving the class and the page's offset in the slab, which is how
// heap_free finds the slab of a pointer without a header per object.
//
// Slabs are filled lazily (a bump index, then a free list), so a fresh 16 KiB slab does not make
// the host back all of its pages at once. One empty slab per class is kept to absorb alloc/free
// ping-pong; further empty slabs go straight back to the page allocator, warm.
//
// Larger sizes (or alignments above 2048) get a run of pages (PageAllocator::alloc_run, exact
// page count, any size) starting at the returned pointer, with no header: the page count is in the
// first page's tag, so a power-of-two size takes exactly a buddy block and no more.
//
// Locking: one SpinLock for the slab lists, never held across a page allocator call (a shrinker
// run by the allocator may free heap memory). A real lock between CPUs: any CPU may allocate and
// free, also objects another CPU allocated. Lock order: taken before nothing but the console's
// (kprintf); the allocator's lock is never taken under it. Page tags (set_tag/tag) are read and
// written outside it by the page's owner, whose ownership was handed over under this lock or the
// allocator's.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/spinlock.h"
#include "mm/page_allocator.h"

namespace blimp::mm {

struct HeapStats {
  uint64_t slab_bytes;      // pages held by slabs (including the cached empty ones)
  uint64_t large_bytes;     // pages held by large allocations
  uint64_t objects_in_use;  // small objects
  uint64_t large_in_use;    // large allocations
  uint64_t allocations;
  uint64_t frees;
  uint64_t failures;
};

class Heap {
 public:
  static constexpr size_t kMinClass = 16;
  static constexpr size_t kMaxClass = 2048;
  static constexpr size_t kNumClasses = 8;

  constexpr explicit Heap(PageAllocator& pages) : pages_(pages) {}
  Heap(const Heap&) = delete;
  Heap& operator=(const Heap&) = delete;

  // nullptr on failure (after the page allocator's reclaim path). `align` must be a power of two.
  void* alloc(size_t size, size_t align = kMinClass);
  // Zeroed memory; large allocations skip pages known to be zero.
  void* alloc_zeroed(size_t size, size_t align = kMinClass);
  void free(void* p);
  size_t usable_size(void* p);
  void* realloc(void* p, size_t size);
  HeapStats stats();
  // Returns every cached empty slab to the page allocator.
  void trim();

  // Layout private to heap.cpp (declared public only so it can check its size).
  struct Slab;

 private:
  void* alloc_small(unsigned cls);
  void* alloc_large(size_t size, size_t align, bool zero);
  Slab* new_slab(unsigned cls);
  void release_slab(Slab* s);

  PageAllocator& pages_;
  SpinLock lock_{LockRank::kHeap};
  Slab* partial_[kNumClasses] = {};
  Slab* empty_[kNumClasses] = {};
  HeapStats stats_ = {};
};

// The global heap (mm::heap()), for the C library and operator new.
void* heap_alloc(size_t size, size_t align = Heap::kMinClass);
void heap_free(void* p);
size_t heap_usable_size(void* p);
void* heap_realloc(void* p, size_t size);
void* heap_calloc(size_t n, size_t size);

}  // namespace blimp::mm
