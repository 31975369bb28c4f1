// A minimal driver for virtio-balloon (device id 5) that proves the core end to end: it
// negotiates features, sets up the queues numbered densely by those features (5.5.2), starts the
// device, sends one buffer through the deflate queue and waits (halted, interrupt-driven) for the
// device to return it, and prints one line describing the result. The real balloon driver
// replaces it by registering its own Driver for id 5.
#pragma once

namespace blimp::virtio {

void register_probe_driver();
// The same for virtio-rng (device id 4): reads 64 bytes of entropy once.
void register_rng_probe_driver();

}  // namespace blimp::virtio
