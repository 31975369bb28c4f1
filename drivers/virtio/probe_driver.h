// A minimal driver for virtio-rng (device id 4) that proves the core end to end: it negotiates,
// sets up its one queue, starts the device, reads 64 bytes of entropy once and waits (halted,
// interrupt-driven) for the device to return the buffer, and prints one line describing the
// result (tests/integration/test_virtio_probe.py checks it). On PCI the rng has MSI-X, so it
// exercises the paths the balloon (INTx only on QEMU) does not.
#pragma once

namespace blimp::virtio {

void register_rng_probe_driver();

}  // namespace blimp::virtio
