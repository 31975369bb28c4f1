// malloc and friends for newlib (built with MALLOC_PROVIDED), routed to the kernel heap so that
// the app's memory and the kernel's come from the one allocator the balloon cooperates with.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <reent.h>

#include "kernel/memory_init.h"

namespace {

// Each block carries its size in a header just before the pointer, so free/realloc know it.
struct Header {
  size_t size;
  size_t offset;  // from the start of the allocation to the user pointer
};

void* allocate(size_t size, size_t align) {
  if (align < 16) align = 16;
  size_t total = size + align + sizeof(Header);
  auto* raw = static_cast<uint8_t*>(blimp::early_heap_alloc(total, 16));
  if (!raw) return nullptr;
  uintptr_t user = (reinterpret_cast<uintptr_t>(raw) + sizeof(Header) + align - 1) & ~(align - 1);
  auto* h = reinterpret_cast<Header*>(user) - 1;
  h->size = size;
  h->offset = user - reinterpret_cast<uintptr_t>(raw);
  return reinterpret_cast<void*>(user);
}

size_t usable(void* p) { return p ? (reinterpret_cast<Header*>(p) - 1)->size : 0; }

}  // namespace

extern "C" {

void* malloc(size_t size) { return allocate(size, 16); }
void free(void*) {}  // the early heap never reuses memory; mm/'s heap replaces it
void* calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return nullptr;
  void* p = malloc(n * size);
  if (p) memset(p, 0, n * size);
  return p;
}
void* realloc(void* old, size_t size) {
  void* p = malloc(size);
  if (p && old) {
    size_t n = usable(old);
    memcpy(p, old, n < size ? n : size);
    free(old);
  }
  return p;
}
void* memalign(size_t align, size_t size) { return allocate(size, align); }
int posix_memalign(void** out, size_t align, size_t size) {
  void* p = allocate(size, align);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
void* aligned_alloc(size_t align, size_t size) { return allocate(size, align); }
size_t malloc_usable_size(void* p) { return usable(p); }

void* _malloc_r(struct _reent*, size_t size) { return malloc(size); }
void _free_r(struct _reent*, void* p) { free(p); }
void* _calloc_r(struct _reent*, size_t n, size_t size) { return calloc(n, size); }
void* _realloc_r(struct _reent*, void* p, size_t size) { return realloc(p, size); }
void* _memalign_r(struct _reent*, size_t align, size_t size) { return memalign(align, size); }
size_t _malloc_usable_size_r(struct _reent*, void* p) { return usable(p); }

}  // extern "C"
