#include "kernel/power.h"

#include "kernel/acpi.h"
#include "kernel/arch/io.h"
#include "kernel/console.h"
#include "kernel/timer.h"
#include "lib/atomic.h"

namespace blimp::power {
namespace {
bool g_stop_requested = false;
}  // namespace

bool stop_requested() { return __atomic_load_n(&g_stop_requested, __ATOMIC_ACQUIRE); }

void request_stop() { __atomic_store_n(&g_stop_requested, true, __ATOMIC_RELEASE); }

bool sleep_unless_stopped(uint64_t ns) {
  const uint64_t deadline = timer::now_ns() + ns;
  while (!stop_requested()) {
    if (timer::now_ns() >= deadline) return false;
    timer::wait_until(deadline);  // returns early on any interrupt, the button's included
  }
  return true;
}

void exit(int status) {
  asm volatile("cli");
  // isa-debug-exit (iobase 0xf4): QEMU exits with (status << 1) | 1. Absent device: ignored.
  arch::outb(0xf4, static_cast<uint8_t>(status & 0x7f));
  const auto& p = acpi::platform();
  if (p.hardware_reduced && p.sleep_control_addr) {
    // ACPI 6.4, 4.8.3.7: SLP_TYP in bits 2..4, SLP_EN bit 5; QEMU's GED uses S5 = 5.
    uint8_t v = (5 << 2) | (1 << 5);
    if (p.sleep_control_space == 1)
      arch::outb(static_cast<uint16_t>(p.sleep_control_addr), v);
    else
      arch::mmio_write<uint8_t>(p.sleep_control_addr, v);
  }
  if (p.pm1a_control_port) {
    // PM1a_CNT: SLP_TYP (bits 10..12) = QEMU's _S5 value 0, SLP_EN bit 13.
    arch::outw(p.pm1a_control_port, 1 << 13);
  }
  // QEMU acts on an ACPI power-off from its main loop, not inside the write: the vCPU runs on
  // for a moment (milliseconds under TCG). Give it a second before saying the power-off failed,
  // or every ACPI shutdown (libvirt's, with no isa-debug-exit) ends with a false alarm.
  if (timer::tsc_hz() != 0 && (p.pm1a_control_port || p.sleep_control_addr)) {
    const uint64_t deadline = timer::now_ns() + 1000000000ull;
    while (timer::now_ns() < deadline) cpu_relax();
  }
  kprintf("blimp: could not power off (no isa-debug-exit, no ACPI); halting with status %d\n",
          status);
  for (;;) asm volatile("cli; hlt");
}

}  // namespace blimp::power
