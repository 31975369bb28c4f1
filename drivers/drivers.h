// Device discovery and driver binding. The kernel calls init() once, after interrupts and the
// timer are up: it registers the built-in virtio drivers, finds virtio-mmio devices from the
// command line (virtio_mmio.device=SIZE@ADDR:IRQ, which QEMU appends) and virtio-pci devices on
// the PCI bus, and hands each to the driver registered for its device id.
#pragma once

#include "drivers/virtio/device.h"

namespace blimp::drivers {

void init();

// Adding a driver: call virtio::register_driver() before init() runs; kernel/main.cpp does
// that for the drivers the image carries (the balloon). The probe-only drivers (entropy) are
// registered only if nothing else registered their device id.

// Devices found by init(), bound or not, in discovery order (nullptr past the end).
virtio::Device* virtio_device(unsigned index);

}  // namespace blimp::drivers
