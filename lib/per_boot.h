// Placement of guest globals whose value differs from boot to boot (timings, clock calibration).
//
// KSM shares a page between VMs only when all 4096 bytes are equal: blind KSM over all guest RAM,
// and the host marking the guest's WRITABLE merge candidates (the kernel's .data/.bss, spec
// section 5.4). One per-boot value stored among otherwise identical globals keeps its whole page
// apart in every VM: the sharing module's hashing time alone cost one unmerged page per VM
// (docs/experiments.md, experiment 4). kernel/linker.ld gathers this section on pages of its own,
// so all such values together spoil as few pages as they fill.
//
// Zero-initialized variables only: the section is .bss (NOLOAD, zeroed by entry.S).
#pragma once

#define BLIMP_PER_BOOT __attribute__((section(".bss.per_boot")))
