#include "drivers/power_button.h"

#include <cstdint>

#include "drivers/shared_irq.h"
#include "kernel/acpi.h"
#include "kernel/arch/io.h"
#include "kernel/console.h"
#include "kernel/power.h"
#include "lib/atomic.h"

namespace blimp::drivers {
namespace {

constexpr uint16_t kPm1PowerButton = 1u << 8;  // PWRBTN_STS / PWRBTN_EN (ACPI 6.4, 4.8.3.1)
constexpr uint16_t kPm1SciEnable = 1u << 0;    // SCI_EN in PM1_CNT

// QEMU's GED (hw/acpi/generic_event_device.c): a 32-bit event selector at offset 0, read to
// clear; bit 1 is the power-down event. The sleep registers follow at offset 0x200.
constexpr uint64_t kGedRegsOffset = 0x200;
constexpr uint32_t kGedPowerDownEvent = 1u << 1;

uint16_t g_pm1_status = 0;
uint64_t g_ged_base = 0;

void pressed(const char* how) {
  kprintf("power: button pressed (%s): asking the app to stop\n", how);
  power::request_stop();
}

void on_sci(void*) {
  const uint16_t status = arch::inw(g_pm1_status);
  if (!(status & kPm1PowerButton)) return;    // another source on a shared line
  arch::outw(g_pm1_status, kPm1PowerButton);  // write 1 to clear: drops the level-triggered SCI
  pressed("ACPI fixed-feature button");
}

void on_ged(void*) {
  if (arch::mmio_read<uint32_t>(g_ged_base) & kGedPowerDownEvent) pressed("ACPI GED");
}

// MADT override flags (ACPI 6.4, 5.2.12.5): polarity bits 0-1, trigger mode bits 2-3; 0 means
// the bus default, which for the SCI is level-triggered, active low (5.2.9).
void sci_mode(uint16_t flags, bool& level, bool& active_low) {
  const unsigned polarity = flags & 3, trigger = (flags >> 2) & 3;
  level = trigger != 1;
  active_low = polarity != 1;
}

}  // namespace

void init_power_button() {
  const auto& p = acpi::platform();
  if (!p.found) return;
  if (p.hardware_reduced) {
    if (p.sleep_control_space != 0 || p.sleep_control_addr < kGedRegsOffset) return;
    g_ged_base = p.sleep_control_addr - kGedRegsOffset;
    (void)arch::mmio_read<uint32_t>(g_ged_base);  // drop any stale event
    // QEMU pulses the GED's line (GSI 9 on microvm): edge-triggered, active high.
    auto v = attach_gsi(p.isa_gsi[9], false, false, &on_ged, nullptr);
    if (v.is_error()) {
      kprintf("power: GED interrupt not routed; the power button is ignored\n");
      return;
    }
    kprintf("power: power button via the ACPI GED at %#lx\n", g_ged_base);
    return;
  }
  if (!p.pm1a_event_port || p.pm1_event_length < 4 || p.sci_irq >= 16) return;
  g_pm1_status = p.pm1a_event_port;
  const uint16_t enable = uint16_t(p.pm1a_event_port + p.pm1_event_length / 2);
  // ACPI mode (SCI_EN) first, as an OS does when the firmware left the machine in legacy mode.
  if (p.pm1a_control_port && !(arch::inw(p.pm1a_control_port) & kPm1SciEnable) &&
      p.smi_command_port && p.acpi_enable_value) {
    arch::outb(uint16_t(p.smi_command_port), p.acpi_enable_value);
    for (int i = 0; i < 1000 && !(arch::inw(p.pm1a_control_port) & kPm1SciEnable); i++) cpu_relax();
  }
  arch::outw(g_pm1_status, kPm1PowerButton);  // clear a stale press
  bool level, active_low;
  sci_mode(p.isa_flags[p.sci_irq], level, active_low);
  auto v = attach_gsi(p.isa_gsi[p.sci_irq], level, active_low, &on_sci, nullptr);
  if (v.is_error()) {
    kprintf("power: SCI (IRQ %u) not routed; the power button is ignored\n", p.sci_irq);
    return;
  }
  arch::outw(enable, uint16_t(arch::inw(enable) | kPm1PowerButton));
  kprintf("power: power button via ACPI PM1 at port %#x, SCI IRQ %u\n", g_pm1_status, p.sci_irq);
}

}  // namespace blimp::drivers
