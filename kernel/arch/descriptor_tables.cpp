#include "kernel/arch/descriptor_tables.h"

namespace blimp::arch {
namespace {

struct [[gnu::packed]] IdtEntry {
  uint16_t offset_low;
  uint16_t selector;
  uint8_t ist;
  uint8_t type_attr;
  uint16_t offset_mid;
  uint32_t offset_high;
  uint32_t reserved;
};

struct [[gnu::packed]] DescriptorPointer {
  uint16_t limit;
  uint64_t base;
};

constexpr uint16_t kCodeSelector = 0x08, kTssSelector = 0x18;

CpuTables g_bsp_tables;
alignas(16) IdtEntry g_idt[256];
alignas(16) uint8_t g_fault_stack[16384];
alignas(16) uint8_t g_nmi_stack[8192];

void load_idt() {
  DescriptorPointer idtr{sizeof g_idt - 1, reinterpret_cast<uint64_t>(g_idt)};
  asm volatile("lidt %0" ::"m"(idtr));
}

}  // namespace
}  // namespace blimp::arch

extern "C" const uint64_t isr_table[256];

namespace blimp::arch {

void load_cpu_tables(CpuTables& t, uint64_t fault_stack_top, uint64_t nmi_stack_top) {
  t.gdt[0] = 0;
  t.gdt[1] = 0x00af9a000000ffffull;  // 64-bit code
  t.gdt[2] = 0x00cf92000000ffffull;  // data
  uint64_t tss = reinterpret_cast<uint64_t>(&t.tss);
  uint64_t limit = sizeof(Tss) - 1;
  t.gdt[3] = (limit & 0xffff) | ((tss & 0xffffff) << 16) | (0x89ull << 40) |
             (((limit >> 16) & 0xf) << 48) | (((tss >> 24) & 0xff) << 56);
  t.gdt[4] = tss >> 32;
  t.tss = {};
  t.tss.ist[0] = fault_stack_top;
  t.tss.ist[1] = nmi_stack_top;
  t.tss.iomap_base = sizeof(Tss);

  DescriptorPointer gdtr{sizeof t.gdt - 1, reinterpret_cast<uint64_t>(t.gdt)};
  asm volatile(
      "lgdt %0\n"
      "pushq %1\n"
      "leaq 1f(%%rip), %%rax\n"
      "pushq %%rax\n"
      "lretq\n"
      "1:\n"
      "mov $0x10, %%ax\n"
      "mov %%ax, %%ds\n"
      "mov %%ax, %%es\n"
      "mov %%ax, %%ss\n"
      "ltr %w2\n" ::"m"(gdtr),
      "i"(uint64_t(kCodeSelector)), "r"(kTssSelector)
      : "rax", "memory");
  load_idt();
}

void init_descriptor_tables() {
  for (int v = 0; v < 256; v++) {
    uint64_t addr = isr_table[v];
    IdtEntry& e = g_idt[v];
    e.offset_low = addr & 0xffff;
    e.selector = kCodeSelector;
    e.ist = v == 8 ? 1 : v == 2 ? 2 : 0;  // double fault, NMI on their own stacks
    e.type_attr = 0x8e;                   // present, ring 0, interrupt gate (IF cleared)
    e.offset_mid = (addr >> 16) & 0xffff;
    e.offset_high = addr >> 32;
    e.reserved = 0;
  }
  load_cpu_tables(g_bsp_tables, reinterpret_cast<uint64_t>(g_fault_stack + sizeof g_fault_stack),
                  reinterpret_cast<uint64_t>(g_nmi_stack + sizeof g_nmi_stack));
}

}  // namespace blimp::arch
