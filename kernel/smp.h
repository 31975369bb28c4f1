// Application processor (AP) bring-up: the first step towards many vCPUs (issue 17).
//
// The BSP reads the processors from the MADT, starts each AP with INIT-SIPI-SIPI through a
// real-mode trampoline below 1 MiB, and waits for it, bounded. An AP loads its own GDT/TSS and
// the shared IDT, enables its local APIC with every local interrupt masked, says
// "smp: cpu N (apic id X) online" and parks in `hlt` with interrupts off. It touches nothing but
// its own state byte and the console (under the console's spinlock): the rest of the kernel
// still assumes one CPU, and that stays true. Nothing is ever scheduled on an AP yet.
#pragma once

#include <cstddef>

#include "kernel/boot/boot_info.h"

namespace blimp::smp {

// BSP only, once, with interrupts disabled, after the memory manager (AP stacks are allocated
// from it) and the timer (the waits are bounded by it). `smp=off` on the command line keeps one
// CPU. Reports "smp: N of M CPUs online"; an AP that does not come up is reported, never waited
// for without bound.
void start(const BootInfo& boot);

// CPUs running, the BSP included (1 until start() has run, and with smp=off).
size_t online_count();

}  // namespace blimp::smp
