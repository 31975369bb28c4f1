#include "mm/heap.h"

#include <cstring>

#include "kernel/panic.h"
#include "mm/mm.h"

namespace blimp::mm {

namespace {

constexpr uint32_t kTagKindShift = 28;
constexpr uint32_t kTagSlab = 1u << kTagKindShift;
constexpr uint32_t kTagLarge = 2u << kTagKindShift;
constexpr uint32_t kTagKindMask = 0xfu << kTagKindShift;
constexpr uint32_t kSlabMagic = 0x51ab51abu;
constexpr size_t kSlabHeader = 64;
constexpr uint32_t kTagPagesMask = (1u << kTagKindShift) - 1;

constexpr size_t class_size(unsigned cls) { return Heap::kMinClass << cls; }
// Bigger classes get multi-page slabs so the header slot wastes at most an eighth.
constexpr unsigned slab_order(unsigned cls) {
  return class_size(cls) <= 256 ? 0 : class_size(cls) == 512 ? 1 : 2;
}
constexpr size_t first_offset(unsigned cls) {
  return class_size(cls) > kSlabHeader ? class_size(cls) : kSlabHeader;
}

int class_for(size_t size, size_t align) {
  size_t need = size > align ? size : align;
  if (need > Heap::kMaxClass) return -1;
  unsigned cls = 0;
  while (class_size(cls) < need) ++cls;
  return static_cast<int>(cls);
}

uintptr_t page_of(const void* p) { return reinterpret_cast<uintptr_t>(p) & ~(kPageSize - 1); }

}  // namespace

struct Heap::Slab {
  uint32_t magic;
  uint16_t cls;
  uint16_t capacity;
  uint16_t in_use;
  uint16_t bump;  // objects never handed out start here
  uint32_t pad;
  void* free_list;
  Slab* next;
  Slab* prev;
};
static_assert(sizeof(Heap::Slab) <= kSlabHeader);

namespace {
template <typename S>
void list_push(S*& head, S* s) {
  s->prev = nullptr;
  s->next = head;
  if (head) head->prev = s;
  head = s;
}
template <typename S>
void list_unlink(S*& head, S* s) {
  if (s->prev)
    s->prev->next = s->next;
  else
    head = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = nullptr;
}
}  // namespace

Heap::Slab* Heap::new_slab(unsigned cls) {
  unsigned order = slab_order(cls);
  auto r = pages_.alloc_pages(order, Owner::Kernel, kAllocNone);
  if (r.is_error()) return nullptr;
  PhysAddr base = r.value();
  for (unsigned i = 0; i < (1u << order); ++i) pages_.set_tag(base + i * kPageSize, kTagSlab | i);
  Slab* s = phys_to_virt<Slab>(base);
  s->magic = kSlabMagic;
  s->cls = static_cast<uint16_t>(cls);
  s->capacity =
      static_cast<uint16_t>((bytes_of_order(order) - first_offset(cls)) / class_size(cls));
  s->in_use = 0;
  s->bump = 0;
  s->free_list = nullptr;
  s->next = s->prev = nullptr;
  return s;
}

void Heap::release_slab(Slab* s) {
  PhysAddr base = virt_to_phys(s);
  unsigned order = slab_order(s->cls);
  s->magic = 0;
  for (unsigned i = 0; i < (1u << order); ++i) pages_.set_tag(base + i * kPageSize, 0);
  pages_.free_pages(base, order);
}

void* Heap::alloc_small(unsigned cls) {
  lock_.lock();
  Slab* s = partial_[cls];
  if (!s && empty_[cls]) {
    s = empty_[cls];
    empty_[cls] = nullptr;
    list_push(partial_[cls], s);
  }
  if (!s) {
    lock_.unlock();
    Slab* fresh = new_slab(cls);
    lock_.lock();
    if (!fresh) {
      ++stats_.failures;
      lock_.unlock();
      return nullptr;
    }
    stats_.slab_bytes += bytes_of_order(slab_order(cls));
    list_push(partial_[cls], fresh);
    s = partial_[cls];
  }
  void* obj;
  if (s->free_list) {
    obj = s->free_list;
    s->free_list = *static_cast<void**>(obj);
  } else {
    obj = reinterpret_cast<char*>(s) + first_offset(cls) + s->bump * class_size(cls);
    ++s->bump;
  }
  if (++s->in_use == s->capacity) list_unlink(partial_[cls], s);
  ++stats_.objects_in_use;
  ++stats_.allocations;
  lock_.unlock();
  return obj;
}

// No header: the run starts at the returned pointer and its page count lives in the first page's
// tag, so a 1 MiB malloc takes exactly 256 pages (a header would make it 257 and cost a whole
// second 2 MiB buddy block).
void* Heap::alloc_large(size_t size, size_t align, bool zero) {
  uint64_t pages = (size + kPageSize - 1) / kPageSize;
  if (pages == 0) pages = 1;
  if (pages > kTagPagesMask) return nullptr;
  uint64_t slack = align > kPageSize ? align / kPageSize - 1 : 0;
  auto r = pages_.alloc_run(pages + slack, Owner::Kernel, zero ? kAllocZero : kAllocNone);
  if (r.is_error()) {
    SpinLockGuard g(lock_);
    ++stats_.failures;
    return nullptr;
  }
  PhysAddr base = r.value();
  PhysAddr p = (base + align - 1) & ~(static_cast<PhysAddr>(align) - 1);
  uint64_t head = (p - base) / kPageSize;
  if (head) pages_.free_run(base, head);
  if (slack > head) pages_.free_run(p + pages * kPageSize, slack - head);
  pages_.set_tag(p, kTagLarge | static_cast<uint32_t>(pages));
  SpinLockGuard g(lock_);
  stats_.large_bytes += pages * kPageSize;
  ++stats_.large_in_use;
  ++stats_.allocations;
  return phys_to_virt(p);
}

void* Heap::alloc(size_t size, size_t align) {
  if (align < kMinClass) align = kMinClass;
  if (align & (align - 1)) return nullptr;
  int cls = class_for(size, align);
  if (cls >= 0) return alloc_small(static_cast<unsigned>(cls));
  return alloc_large(size, align, false);
}

void* Heap::alloc_zeroed(size_t size, size_t align) {
  if (align < kMinClass) align = kMinClass;
  if (align & (align - 1)) return nullptr;
  int cls = class_for(size, align);
  if (cls < 0) return alloc_large(size, align, true);
  void* p = alloc_small(static_cast<unsigned>(cls));
  if (p) std::memset(p, 0, class_size(static_cast<unsigned>(cls)));
  return p;
}

void Heap::free(void* p) {
  if (!p) return;
  uint32_t tag = pages_.tag(page_of(p));
  if ((tag & kTagKindMask) == kTagLarge) {
    if (page_of(p) != reinterpret_cast<uintptr_t>(p))
      panic("heap_free(%p): inside a large allocation", p);
    uint64_t pages = tag & kTagPagesMask;
    pages_.set_tag(virt_to_phys(p), 0);
    {
      SpinLockGuard g(lock_);
      stats_.large_bytes -= pages * kPageSize;
      --stats_.large_in_use;
      ++stats_.frees;
    }
    pages_.free_run(virt_to_phys(p), pages);
    return;
  }
  if ((tag & kTagKindMask) != kTagSlab) panic("heap_free(%p): not a heap pointer", p);
  Slab* s = reinterpret_cast<Slab*>(page_of(p) - (tag & 0xff) * kPageSize);
  if (s->magic != kSlabMagic) panic("heap_free(%p): corrupt slab", p);
  unsigned cls = s->cls;
  uintptr_t off = reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(s);
  if (off < first_offset(cls) || (off - first_offset(cls)) % class_size(cls) != 0)
    panic("heap_free(%p): not the start of an object", p);
  Slab* to_release = nullptr;
  {
    SpinLockGuard g(lock_);
    // Catches the double frees that would empty a slab twice; others corrupt the free list
    // silently (a per-object bitmap would catch them all, at a cost on every free).
    if (s->in_use == 0) panic("heap_free(%p): double free", p);
    *static_cast<void**>(p) = s->free_list;
    s->free_list = p;
    if (s->in_use-- == s->capacity) list_push(partial_[cls], s);
    if (s->in_use == 0) {
      list_unlink(partial_[cls], s);
      if (!empty_[cls]) {
        empty_[cls] = s;
      } else {
        to_release = s;
        stats_.slab_bytes -= bytes_of_order(slab_order(cls));
      }
    }
    --stats_.objects_in_use;
    ++stats_.frees;
  }
  if (to_release) release_slab(to_release);
}

size_t Heap::usable_size(void* p) {
  if (!p) return 0;
  uint32_t tag = pages_.tag(page_of(p));
  if ((tag & kTagKindMask) == kTagLarge) return (tag & kTagPagesMask) * kPageSize;
  if ((tag & kTagKindMask) != kTagSlab) panic("heap_usable_size(%p): not a heap pointer", p);
  Slab* s = reinterpret_cast<Slab*>(page_of(p) - (tag & 0xff) * kPageSize);
  return class_size(s->cls);
}

void* Heap::realloc(void* p, size_t size) {
  if (!p) return alloc(size);
  if (size == 0) {
    free(p);
    return nullptr;
  }
  size_t have = usable_size(p);
  // Shrinking keeps the block: always for small objects, for large ones unless more than half
  // of it would sit unused.
  if (size <= have && (have <= kMaxClass || size >= have / 2)) return p;
  void* q = alloc(size);
  if (!q) return nullptr;
  std::memcpy(q, p, size < have ? size : have);
  free(p);
  return q;
}

HeapStats Heap::stats() {
  SpinLockGuard g(lock_);
  return stats_;
}

void Heap::trim() {
  for (unsigned cls = 0; cls < kNumClasses; ++cls) {
    Slab* s;
    {
      SpinLockGuard g(lock_);
      s = empty_[cls];
      empty_[cls] = nullptr;
      if (s) stats_.slab_bytes -= bytes_of_order(slab_order(cls));
    }
    if (s) release_slab(s);
  }
}

void* heap_alloc(size_t size, size_t align) { return heap().alloc(size, align); }
void heap_free(void* p) { heap().free(p); }
size_t heap_usable_size(void* p) { return heap().usable_size(p); }
void* heap_realloc(void* p, size_t size) { return heap().realloc(p, size); }
void* heap_calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return nullptr;
  return heap().alloc_zeroed(n * size);
}

}  // namespace blimp::mm
