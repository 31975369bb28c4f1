// malloc and friends for newlib (built with MALLOC_PROVIDED), routed to the kernel heap so that
// the app's memory and the kernel's come from the one allocator the balloon cooperates with.
// Allocation failure goes through the allocator's reclaim path (shrinkers, then deflate on OOM)
// before malloc returns NULL.
#include <reent.h>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "mm/heap.h"
#include "mm/mm.h"

namespace {

bool valid_alignment(size_t align) { return align && (align & (align - 1)) == 0; }

}  // namespace

extern "C" {

void* malloc(size_t size) { return blimp::mm::heap().alloc(size ? size : 1); }
void free(void* p) {
  if (p) blimp::mm::heap().free(p);
}
void* calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) {
    errno = ENOMEM;
    return nullptr;
  }
  size_t bytes = n * size;
  return blimp::mm::heap().alloc_zeroed(bytes ? bytes : 1);
}
void* realloc(void* p, size_t size) { return blimp::mm::heap().realloc(p, size); }
void* memalign(size_t align, size_t size) {
  if (!valid_alignment(align)) {
    errno = EINVAL;
    return nullptr;
  }
  return blimp::mm::heap().alloc(size ? size : 1, align < 16 ? 16 : align);
}
int posix_memalign(void** out, size_t align, size_t size) {
  if (!valid_alignment(align) || align % sizeof(void*)) return EINVAL;
  void* p = memalign(align, size);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
void* aligned_alloc(size_t align, size_t size) { return memalign(align, size); }
size_t malloc_usable_size(void* p) { return p ? blimp::mm::heap().usable_size(p) : 0; }

void* _malloc_r(struct _reent*, size_t size) { return malloc(size); }
void _free_r(struct _reent*, void* p) { free(p); }
void* _calloc_r(struct _reent*, size_t n, size_t size) { return calloc(n, size); }
void* _realloc_r(struct _reent*, void* p, size_t size) { return realloc(p, size); }
void* _memalign_r(struct _reent*, size_t align, size_t size) { return memalign(align, size); }
size_t _malloc_usable_size_r(struct _reent*, void* p) { return malloc_usable_size(p); }

}  // extern "C"
