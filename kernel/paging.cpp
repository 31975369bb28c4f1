#include "kernel/paging.h"

#include "kernel/console.h"
#include "kernel/memory.h"

extern "C" uint64_t boot_pml4[512];
extern "C" uint64_t boot_pd[2048];

namespace blimp {
namespace {

constexpr uint64_t kPresent = 1, kWritable = 2, kWriteThrough = 8, kCacheDisable = 16, kHuge = 0x80;
constexpr uint64_t kAddrMask = 0x000ffffffffff000ull;
constexpr uint64_t k2M = 2ull << 20;
constexpr uint64_t kBootMapped = 4ull << 30;

// Page-table pages for mappings beyond the boot map: 64 pages map 64 GiB of extra RAM or MMIO.
constexpr int kPoolPages = 64;
alignas(4096) uint64_t g_pool[kPoolPages][512];
int g_pool_used = 0;

uint64_t* next_table(uint64_t* table, unsigned index) {
  if (table[index] & kPresent) return phys_to_virt<uint64_t>(table[index] & kAddrMask);
  if (g_pool_used == kPoolPages) return nullptr;
  uint64_t* t = g_pool[g_pool_used++];
  for (int i = 0; i < 512; i++) t[i] = 0;
  table[index] = virt_to_phys(t) | kPresent | kWritable;
  return t;
}

bool map_2m(uint64_t addr, uint64_t flags) {
  uint64_t* pdpt = next_table(boot_pml4, (addr >> 39) & 511);
  if (!pdpt) return false;
  uint64_t* pd = next_table(pdpt, (addr >> 30) & 511);
  if (!pd) return false;
  uint64_t& e = pd[(addr >> 21) & 511];
  if (!(e & kPresent)) e = addr | flags | kPresent | kWritable | kHuge;
  return true;
}

bool map_range(uint64_t base, uint64_t size, uint64_t flags) {
  uint64_t start = base & ~(k2M - 1);
  uint64_t end = (base + size + k2M - 1) & ~(k2M - 1);
  for (uint64_t a = start; a < end; a += k2M) {
    if (a < kBootMapped) continue;
    if (!map_2m(a, flags)) {
      kprintf("paging: out of page-table pages mapping %#lx\n", a);
      return false;
    }
  }
  asm volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
  return true;
}

}  // namespace

namespace paging {
bool map_ram(uint64_t base, uint64_t size) { return map_range(base, size, 0); }
}  // namespace paging

bool map_mmio(PhysAddr base, uint64_t size) {
  return map_range(base, size, kWriteThrough | kCacheDisable);
}

}  // namespace blimp

namespace blimp::paging {

// Splits the first 2 MiB into 4 KiB pages and leaves page 0 unmapped, so that a null pointer
// dereference faults instead of silently reading the real-mode IVT.
bool protect_null_page() {
  if (g_pool_used == kPoolPages) return false;
  uint64_t* pt = g_pool[g_pool_used++];
  pt[0] = 0;
  for (uint64_t i = 1; i < 512; i++) pt[i] = (i << 12) | kPresent | kWritable;
  boot_pd[0] = virt_to_phys(pt) | kPresent | kWritable;
  asm volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
  return true;
}

}  // namespace blimp::paging
