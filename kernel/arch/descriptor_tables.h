// GDT (with a TSS whose interrupt stacks catch double faults and NMIs on a known-good stack),
// IDT over the 256 stubs in isr.S, and the frame those stubs build.
//
// Every CPU has its own GDT and TSS (loading a TSS marks its descriptor busy, so two CPUs cannot
// share one; each also needs its own interrupt stacks); the IDT is one table for all.
//
// Stack alignment: in long mode the CPU aligns RSP to 16 before pushing its 5-word frame; the
// stub pushes an error code (real or dummy), the vector and 15 registers: 22 words in all, so
// RSP is 16-aligned again for fxsave and the call.
#pragma once

#include <cstdint>

namespace blimp::arch {

struct InterruptFrame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error_code;
  uint64_t rip, cs, rflags, rsp, ss;
};

struct [[gnu::packed]] Tss {
  uint32_t reserved0;
  uint64_t rsp[3];
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3;
  uint16_t iomap_base;
};

// One CPU's GDT (null, 64-bit code 0x08, data 0x10, the 16-byte TSS descriptor at 0x18) and TSS.
struct CpuTables {
  alignas(16) uint64_t gdt[5];
  alignas(16) Tss tss;
};

// The bootstrap processor: builds the IDT and loads its own tables (static storage).
void init_descriptor_tables();
// An application processor: fills `tables` with its interrupt stacks (tops, 16-byte aligned) for
// double faults and NMIs, loads them and the shared IDT. init_descriptor_tables() must have run.
void load_cpu_tables(CpuTables& tables, uint64_t fault_stack_top, uint64_t nmi_stack_top);

}  // namespace blimp::arch
