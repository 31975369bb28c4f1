// The C++ runtime a freestanding kernel must supply itself: global constructors, operator
// new/delete (over malloc, which libc-shim routes to the kernel heap), pure-virtual trap.
#include <malloc.h>
#include <cstddef>
#include <cstdlib>
#include <new>

#include "kernel/panic.h"

extern "C" {
void* __dso_handle = nullptr;
void __cxa_pure_virtual() { panic("pure virtual function called"); }
}

using Constructor = void (*)();
extern "C" Constructor __init_array_start[], __init_array_end[];

namespace blimp {
void run_global_constructors() {
  for (Constructor* c = __init_array_start; c != __init_array_end; c++) (*c)();
}
}  // namespace blimp

namespace {
void* allocate_or_panic(size_t size, size_t align) {
  void* p =
      align > alignof(max_align_t) ? memalign(align, size ? size : 1) : malloc(size ? size : 1);
  if (!p) panic("operator new: out of memory allocating %zu bytes", size);
  return p;
}
}  // namespace

void* operator new(size_t size) { return allocate_or_panic(size, 0); }
void* operator new[](size_t size) { return allocate_or_panic(size, 0); }
void* operator new(size_t size, std::align_val_t a) {
  return allocate_or_panic(size, static_cast<size_t>(a));
}
void* operator new[](size_t size, std::align_val_t a) {
  return allocate_or_panic(size, static_cast<size_t>(a));
}
void* operator new(size_t size, const std::nothrow_t&) noexcept { return malloc(size ? size : 1); }
void* operator new[](size_t size, const std::nothrow_t&) noexcept {
  return malloc(size ? size : 1);
}
void operator delete(void* p) noexcept { free(p); }
void operator delete[](void* p) noexcept { free(p); }
void operator delete(void* p, size_t) noexcept { free(p); }
void operator delete[](void* p, size_t) noexcept { free(p); }
void operator delete(void* p, std::align_val_t) noexcept { free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { free(p); }
