#include "kernel/arch/apic.h"

#include "kernel/arch/cpu.h"
#include "kernel/arch/io.h"
#include "lib/atomic.h"
#include "lib/irq.h"

namespace blimp::arch::apic {
namespace {

constexpr uint32_t kRegId = 0x20, kRegTpr = 0x80, kRegEoi = 0xb0, kRegSvr = 0xf0,
                   kRegLvtTimer = 0x320, kRegLvtLint0 = 0x350, kRegLvtLint1 = 0x360,
                   kRegLvtError = 0x370, kRegTimerInitial = 0x380, kRegTimerCurrent = 0x390,
                   kRegTimerDivide = 0x3e0, kRegIcrLow = 0x300, kRegIcrHigh = 0x310;
constexpr uint32_t kLvtMasked = 1u << 16;

uint64_t g_lapic = 0xfee00000;
struct IoApic {
  uint64_t base;
  uint32_t gsi_base;
  uint32_t entries;
};
IoApic g_ioapics[4];
int g_ioapic_count = 0;

uint32_t lapic_read(uint32_t reg) { return mmio_read<uint32_t>(g_lapic + reg); }
void lapic_write(uint32_t reg, uint32_t v) { mmio_write<uint32_t>(g_lapic + reg, v); }

uint32_t ioapic_read(const IoApic& io, uint32_t reg) {
  mmio_write<uint32_t>(io.base, reg);
  return mmio_read<uint32_t>(io.base + 0x10);
}
void ioapic_write(const IoApic& io, uint32_t reg, uint32_t v) {
  mmio_write<uint32_t>(io.base, reg);
  mmio_write<uint32_t>(io.base + 0x10, v);
}

void disable_legacy_pic() {
  // ICW1..ICW4: remap to kLegacyPicBase so a stray 8259 interrupt cannot look like an exception.
  outb(0x20, 0x11);
  outb(0xa0, 0x11);
  outb(0x21, kLegacyPicBase);
  outb(0xa1, kLegacyPicBase + 8);
  outb(0x21, 4);
  outb(0xa1, 2);
  outb(0x21, 1);
  outb(0xa1, 1);
  outb(0x21, 0xff);
  outb(0xa1, 0xff);
}

}  // namespace

void init(uint64_t lapic_base) {
  g_lapic = lapic_base;
  disable_legacy_pic();
  wrmsr(0x1b, rdmsr(0x1b) | (1u << 11));  // IA32_APIC_BASE: global enable
  lapic_write(kRegTpr, 0);
  lapic_write(kRegLvtTimer, kLvtMasked);
  lapic_write(kRegLvtLint0, kLvtMasked);
  lapic_write(kRegLvtLint1, 0x400);  // NMI
  lapic_write(kRegLvtError, kLvtMasked);
  lapic_write(kRegSvr, 0x100 | kSpuriousVector);
  lapic_write(kRegTimerDivide, 0x3);  // divide by 16
}

void init_ap() {
  // IA32_APIC_BASE's global enable survives INIT, but set it anyway: it is this CPU's own MSR.
  wrmsr(0x1b, rdmsr(0x1b) | (1u << 11));
  // Priority class 14 (SDM vol. 3A, 11.8.3.1): only vectors 0xf0-0xff get through, and of
  // those only kWakeVector is ever sent (0xff is the spurious vector, never delivered as such).
  lapic_write(kRegTpr, 0xe0);
  lapic_write(kRegLvtTimer, kLvtMasked);
  lapic_write(kRegLvtLint0, kLvtMasked);
  lapic_write(kRegLvtLint1, kLvtMasked);  // NMIs stay with the BSP
  lapic_write(kRegLvtError, kLvtMasked);
  lapic_write(kRegSvr, 0x100 | kSpuriousVector);
}

namespace {

// ICR (SDM vol. 3A, 11.6.1): the destination goes in the high word, and writing the low word
// sends. Delivery status (bit 12) stays set until the IPI has been accepted by the bus.
ErrorOr<void> send_ipi(uint32_t apic_id, uint32_t low) {
  if (apic_id >= 0xff) return Error::InvalidArgument;
  lapic_write(kRegIcrHigh, apic_id << 24);
  lapic_write(kRegIcrLow, low);
  for (int i = 0; i < 1000000; i++) {
    if (!(lapic_read(kRegIcrLow) & (1u << 12))) return {};
    cpu_relax();
  }
  return Error::Timeout;
}

}  // namespace

// Delivery mode INIT (101b) with level assert (bit 14); the de-assert that the 82489DX needed is
// not sent: P6 and later ignore it (SDM vol. 3A, 9.4.4.1).
ErrorOr<void> send_init(uint32_t apic_id) { return send_ipi(apic_id, 0x4500); }
// Delivery mode start-up (110b): the AP starts in real mode at vector * 4 KiB.
ErrorOr<void> send_startup(uint32_t apic_id, uint8_t vector) {
  return send_ipi(apic_id, 0x4600 | vector);
}

ErrorOr<void> send_fixed(uint32_t apic_id, uint8_t vector) {
  IrqGuard guard;
  // Level "assert" (bit 14), which every mode but INIT de-assert must carry (11.6.1).
  return send_ipi(apic_id, 0x4000u | vector);
}

void add_ioapic(uint64_t base, uint32_t gsi_base) {
  if (g_ioapic_count == 4) return;
  IoApic& io = g_ioapics[g_ioapic_count++];
  io.base = base;
  io.gsi_base = gsi_base;
  io.entries = ((ioapic_read(io, 1) >> 16) & 0xff) + 1;
  for (uint32_t i = 0; i < io.entries; i++) {
    ioapic_write(io, 0x10 + 2 * i, kLvtMasked);
    ioapic_write(io, 0x11 + 2 * i, 0);
  }
}

void eoi() { lapic_write(kRegEoi, 0); }
uint32_t local_id() { return lapic_read(kRegId) >> 24; }

void timer_one_shot(uint32_t count) {
  lapic_write(kRegLvtTimer, kTimerVector);  // one-shot, unmasked
  lapic_write(kRegTimerInitial, count ? count : 1);
}
void timer_stop() {
  lapic_write(kRegLvtTimer, kLvtMasked);
  lapic_write(kRegTimerInitial, 0);
}
uint32_t timer_current() { return lapic_read(kRegTimerCurrent); }

bool ioapic_route(uint32_t gsi, uint8_t vector, bool level, bool active_low) {
  for (int i = 0; i < g_ioapic_count; i++) {
    const IoApic& io = g_ioapics[i];
    if (gsi < io.gsi_base || gsi - io.gsi_base >= io.entries) continue;
    uint32_t pin = gsi - io.gsi_base;
    uint32_t low = vector | (active_low ? 1u << 13 : 0) | (level ? 1u << 15 : 0);
    ioapic_write(io, 0x11 + 2 * pin, local_id() << 24);
    ioapic_write(io, 0x10 + 2 * pin, low);
    return true;
  }
  return false;
}

}  // namespace blimp::arch::apic
