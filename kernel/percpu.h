// Per-CPU data: each CPU's own block, and cpu_index(), the number every per-CPU table is indexed
// by (0 = the BSP, then the APs in MADT order, as kernel/smp.h numbers them).
//
// A CPU finds its block through its GS base (IA32_GS_BASE, MSR 0xc0000101; Intel SDM vol. 3A,
// 3.4.4 "Segment Loading Instructions in IA-32e Mode"): the block's first word points at
// itself, so `mov %gs:0` yields it in one load. The alternative, the local APIC ID mapped to an
// index, costs an MMIO read of the APIC ID register (a callback into the device model under TCG,
// an exit under KVM without APIC virtualisation) plus a table lookup, on paths as hot as the
// console lock and the interrupt dispatcher. Blimp runs everything in ring 0 and nothing else
// uses GS, so there is no SWAPGS and KERNEL_GS_BASE stays unused; no code loads a GS selector
// after the MSR is written (in 64-bit mode that could change the base).
//
// Set up for the BSP first thing in kernel_main, for each AP in its entry (kernel/smp.cpp,
// ap_main) before it touches anything shared. Reading it earlier faults on the null page.
// Host builds (unit tests) have no GS: there a thread is CPU 0 unless it says otherwise
// (set_host_cpu_index), which lets tests drive per-CPU code from several threads.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blimp::percpu {

// Most CPUs Blimp uses (acpi::MadtCpus::kMax).
constexpr size_t kMaxCpus = 64;

struct Cpu {
  Cpu* self;  // at offset 0: what %gs:0 reads
  uint32_t index;
  uint32_t apic_id;  // filled in by smp::start for the BSP (the local APIC is not set up yet)
};

// The BSP's block (index 0); before anything reads cpu_index().
void init_bsp();
// An AP's block; from its entry path, on that AP.
void init_ap(size_t index, uint32_t apic_id);
Cpu& block(size_t index);

#if defined(BLIMP_GUEST)
inline Cpu& current() {
  Cpu* c;
  asm volatile("mov %%gs:0, %0" : "=r"(c));
  return *c;
}
inline size_t cpu_index() { return current().index; }
#else
inline thread_local size_t t_host_cpu_index = 0;
inline size_t cpu_index() { return t_host_cpu_index; }
inline void set_host_cpu_index(size_t index) { t_host_cpu_index = index; }
#endif

}  // namespace blimp::percpu
