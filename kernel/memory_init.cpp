#include "kernel/memory_init.h"

#include "kernel/console.h"
#include "mm/mm.h"

extern "C" char __kernel_end[];

namespace blimp {

void init_memory(const BootInfo& boot) {
  // Everything the boot code still needs (command line, ACPI tables) is copied or lies in
  // reserved ranges by now; the loader's structures may be reused.
  mm::init(boot.ram, boot.ram_count, reinterpret_cast<PhysAddr>(__kernel_end));
  auto& pages = mm::pages();
  kprintf("memory: %lu MiB managed, %lu MiB free\n", (pages.total_pages() * kPageSize) >> 20,
          (pages.free_pages_count() * kPageSize) >> 20);
}

}  // namespace blimp
