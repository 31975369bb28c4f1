// Local APIC (xAPIC, memory-mapped) and the I/O APIC. The legacy 8259 PICs are remapped out of
// the way and masked: every interrupt comes through the APICs.
#pragma once

#include <cstdint>

#include "lib/error.h"

namespace blimp::arch::apic {

constexpr uint8_t kTimerVector = 0x20;
constexpr uint8_t kFirstDynamicVector = 0x30;
constexpr uint8_t kLastDynamicVector = 0xdf;
constexpr uint8_t kLegacyPicBase = 0xe0;  // 0xe0..0xef: masked 8259 leftovers, ignored
// Wakes a CPU from its idle `hlt` (kernel/threads.h) and the BSP for deferred work queued by
// another CPU (kernel/deferred_work.h). The only vector of priority class 15 besides the
// spurious one: an AP's task priority lets that class through and nothing else.
constexpr uint8_t kWakeVector = 0xf0;
constexpr uint8_t kSpuriousVector = 0xff;

void init(uint64_t lapic_base);
// An application processor's own local APIC (same address as the BSP's: each CPU sees its own):
// software-enabled, every local interrupt source masked and the task priority at class 14, so
// that of the fixed interrupts only class 15, i.e. kWakeVector, is ever delivered to it (and
// only while its idle loop waits with IF set: kernel/threads.cpp).
void init_ap();
// Adds an I/O APIC (all its inputs masked). Up to four.
void add_ioapic(uint64_t base, uint32_t gsi_base);
void eoi();
uint32_t local_id();

// LAPIC timer, one-shot, divide-by-16.
void timer_one_shot(uint32_t count);
void timer_stop();
uint32_t timer_current();

// Interprocessor interrupts for AP start-up (Intel SDM vol. 3A, 11.6.1 "Interrupt Command
// Register", 9.4.4.1 "Typical BSP Initialization Sequence"; the numbering of the 2023 editions,
// where the APIC chapter is 11). Both wait, bounded, for the local APIC to report the IPI sent:
// Timeout if it never does, InvalidArgument for an APIC ID xAPIC cannot address (> 254).
ErrorOr<void> send_init(uint32_t apic_id);
ErrorOr<void> send_startup(uint32_t apic_id, uint8_t vector);
// A fixed interrupt (delivery mode 000b, edge) to one CPU: the wake-up IPI. Same bounded wait
// and errors; interrupts are masked around the two ICR writes, so that a handler on this CPU
// cannot send between them.
ErrorOr<void> send_fixed(uint32_t apic_id, uint8_t vector);

bool ioapic_route(uint32_t gsi, uint8_t vector, bool level, bool active_low);

}  // namespace blimp::arch::apic
