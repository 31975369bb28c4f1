// Interrupt lines shared by several devices (PCI INTx: on i440FX, slots 2 and 6 both reach PIRQB;
// level-triggered lines are meant to be shared). One vector per GSI; its handler calls every
// attached device's handler, each of which checks its own ISR. Guest only.
#pragma once

#include <cstdint>

#include "lib/error.h"

namespace blimp::drivers {

// Attaches handler(ctx) to `gsi`, routing it on first use. Returns the vector. A GSI already
// routed with a different trigger mode is refused (InvalidArgument).
ErrorOr<uint8_t> attach_gsi(unsigned gsi, bool level_triggered, bool active_low,
                            void (*handler)(void*), void* ctx);

}  // namespace blimp::drivers
