// Local APIC (xAPIC, memory-mapped) and the I/O APIC. The legacy 8259 PICs are remapped out of
// the way and masked: every interrupt comes through the APICs.
#pragma once

#include <cstdint>

namespace blimp::arch::apic {

constexpr uint8_t kTimerVector = 0x20;
constexpr uint8_t kFirstDynamicVector = 0x30;
constexpr uint8_t kLastDynamicVector = 0xdf;
constexpr uint8_t kLegacyPicBase = 0xe0;  // 0xe0..0xef: masked 8259 leftovers, ignored
constexpr uint8_t kSpuriousVector = 0xff;

void init(uint64_t lapic_base);
// Adds an I/O APIC (all its inputs masked). Up to four.
void add_ioapic(uint64_t base, uint32_t gsi_base);
void eoi();
uint32_t local_id();

// LAPIC timer, one-shot, divide-by-16.
void timer_one_shot(uint32_t count);
void timer_stop();
uint32_t timer_current();

bool ioapic_route(uint32_t gsi, uint8_t vector, bool level, bool active_low);

}  // namespace blimp::arch::apic
