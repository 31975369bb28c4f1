// Device discovery and driver binding. The kernel calls init() once, after interrupts and the
// timer are up: it registers the built-in virtio drivers, finds virtio-mmio devices from the
// command line (virtio_mmio.device=SIZE@ADDR:IRQ, which QEMU appends) and virtio-pci devices on
// the PCI bus, and hands each to the driver registered for its device id.
#pragma once

#include "drivers/virtio/device.h"

namespace blimp::drivers {

void init();

// Adding a driver: call virtio::register_driver() before init() runs (a global constructor
// works: the kernel runs them before drivers::init()), or define this hook, which init() calls
// first if it is linked in. The probe-only balloon driver is registered only if nothing else
// registered device id 5.
void register_extra_drivers() __attribute__((weak));

// Devices found by init(), bound or not, in discovery order (nullptr past the end).
virtio::Device* virtio_device(unsigned index);

}  // namespace blimp::drivers
