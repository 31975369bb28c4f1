// Leaving the VM: isa-debug-exit when present (QEMU exits with (status << 1) | 1), else ACPI
// power-off, else halt forever with interrupts off.
#pragma once

#include <cstdint>

namespace blimp::power {

[[noreturn]] void exit(int status);

// The power button (QMP system_powerdown): on pc/q35 the ACPI fixed-feature button (PM1 status
// and enable, the FADT's SCI), on microvm the Generic Event Device. Pressing it does not power
// off: it asks the app to stop. Apps poll stop_requested() in their loops, finish the current
// round, print their summary and return 0. drivers/power_button.cpp sets it.
bool stop_requested();
void request_stop();
// Sleeps `ns` (halting between interrupts) unless a stop is requested first; true if it was.
bool sleep_unless_stopped(uint64_t ns);

}  // namespace blimp::power
