#include "kernel/memory_init.h"

#include "kernel/console.h"
#include "kernel/panic.h"
#include "lib/spinlock.h"

extern "C" char __kernel_end[];

namespace blimp {
namespace {

SpinLock g_lock;
uint64_t g_next = 0, g_limit = 0;

}  // namespace

void init_memory(const BootInfo& boot) {
  uint64_t kernel_end = reinterpret_cast<uint64_t>(__kernel_end);
  // The largest range above the kernel image.
  for (size_t i = 0; i < boot.ram_count; i++) {
    uint64_t base = boot.ram[i].base, end = boot.ram[i].end();
    if (end <= kernel_end) continue;
    if (base < kernel_end) base = kernel_end;
    if (end - base > g_limit - g_next) {
      g_next = base;
      g_limit = end;
    }
  }
  if (g_limit == g_next) panic("no RAM above the kernel image");
  kprintf("memory: early heap %#lx-%#lx\n", g_next, g_limit);
}

void* early_heap_alloc(size_t size, size_t align) {
  SpinLockGuard guard(g_lock);
  uint64_t p = (g_next + align - 1) & ~(uint64_t(align) - 1);
  if (p + size > g_limit) return nullptr;
  g_next = p + size;
  return reinterpret_cast<void*>(p);
}

}  // namespace blimp
