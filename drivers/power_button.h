// The ACPI power button, which asks the app to stop (power::request_stop()).
#pragma once

namespace blimp::drivers {

// pc/q35: the fixed-feature button (PWRBTN_STS/PWRBTN_EN in PM1a, the FADT's SCI). microvm
// (hardware-reduced): QEMU's Generic Event Device, whose selector register sits 0x200 below the
// sleep control register the FADT names. Does nothing on a machine with neither.
void init_power_button();

}  // namespace blimp::drivers
