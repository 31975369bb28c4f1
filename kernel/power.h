// Leaving the VM: isa-debug-exit when present (QEMU exits with (status << 1) | 1), else ACPI
// power-off, else halt forever with interrupts off.
#pragma once

namespace blimp::power {

[[noreturn]] void exit(int status);

}  // namespace blimp::power
