// Interrupt routing for drivers. Vectors 32..239 are handed out dynamically; the common entry
// stub saves all registers (including SSE state), calls the handler with interrupts masked, then
// signals end-of-interrupt to the local APIC. Handlers must be short: they may run while the app
// is anywhere outside an IrqGuard / SpinLock.
//
// CPUs: every device interrupt and MSI goes to the BSP (route_gsi and msi_message name the
// calling CPU, and only the BSP's drivers call them); vectors and routes are set up by the BSP
// with interrupts masked, so the tables need no lock. An AP takes only arch::apic::kWakeVector.
#pragma once

#include <cstdint>

#include "lib/error.h"

namespace blimp::interrupts {

using Handler = void (*)(void* context);

// Reserves a vector and installs `handler` on it.
ErrorOr<uint8_t> allocate_vector(Handler handler, void* context);

// Routes an I/O APIC input (GSI) to `vector` and unmasks it. Edge-triggered active-high suits
// virtio-mmio on microvm; PCI INTx is level-triggered active-low.
ErrorOr<void> route_gsi(unsigned gsi, uint8_t vector, bool level_triggered, bool active_low);

// The MSI / MSI-X message that delivers `vector` to this CPU.
struct MsiMessage {
  uint64_t address;
  uint32_t data;
};
MsiMessage msi_message(uint8_t vector);

}  // namespace blimp::interrupts
