// Where virtio-mmio devices are: QEMU tells the guest in one of two ways.
//  - `virtio_mmio.device=SIZE@ADDR:IRQ` words on the kernel command line (Linux's syntax), which
//    QEMU's microvm appends only when ACPI is off (`-M microvm,acpi=off`).
//  - ACPI (microvm's default): a DSDT Device with _HID "LNRO0005" per transport that has a device
//    plugged in, whose _CRS holds a Memory32Fixed window and an Extended Interrupt.
// Both parsers are plain byte parsing, unit tested on the host.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blimp::virtio {

struct MmioDeviceDesc {
  uint64_t base = 0;
  uint64_t size = 0;
  uint32_t gsi = 0;
  bool level_triggered = false;
  bool active_low = false;
};

// Parses the value of one virtio_mmio.device= word: "SIZE[K|M|G]@ADDR:IRQ[:ID]".
bool parse_mmio_cmdline(const char* value, size_t len, MmioDeviceDesc& out);

// Scans AML (a DSDT or SSDT body) for LNRO0005 devices. Not an AML interpreter: it finds each
// _HID string and reads the resource template that follows it. Returns how many were found
// (at most `max` are stored).
size_t scan_aml_for_virtio_mmio(const uint8_t* aml, size_t len, MmioDeviceDesc* out, size_t max);

}  // namespace blimp::virtio
