// Application processor (AP) bring-up: the first step towards many vCPUs (issue 17).
//
// The BSP reads the processors from the MADT, starts each AP with INIT-SIPI-SIPI through a
// real-mode trampoline below 1 MiB, and waits for it, bounded. An AP loads its own GDT/TSS and
// the shared IDT, its per-CPU block (kernel/percpu.h), enables its local APIC with every local
// interrupt masked, says "smp: cpu N (apic id X) online" and enters the idle loop of
// kernel/threads.h, where it waits for a thread to run. Which kernel services an AP may use is
// listed in kernel/threads.h; docs/architecture.md, "SMP", has the whole picture.
//
// CPUs are numbered by their index: 0 is the BSP, the APs follow in MADT order. An AP that did
// not come up keeps its index (the numbering does not shift) and is never online.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernel/boot/boot_info.h"

namespace blimp::smp {

// BSP only, once, with interrupts disabled, after the memory manager (AP stacks are allocated
// from it) and the timer (the waits are bounded by it). `smp=off` on the command line keeps one
// CPU. Reports "smp: N of M CPUs online"; an AP that does not come up is reported, never waited
// for without bound.
void start(const BootInfo& boot);

// CPUs running, the BSP included (1 until start() has run, and with smp=off).
size_t online_count();
// CPUs listed (indices 0 .. cpu_count()-1), online or not; 1 until start() has run.
size_t cpu_count();
// Whether CPU `index` came up (the BSP always did). Any CPU may ask.
bool is_online(size_t index);
// The local APIC ID of CPU `index` (< cpu_count()).
uint32_t apic_id(size_t index);

}  // namespace blimp::smp
