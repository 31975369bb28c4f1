// Time and sleeping. time is the TSC, calibrated at boot; timed wakeups use the local APIC timer
// in one-shot mode, so an idle guest takes no timer interrupts it does not need.
//
// CPUs: now_ns() and tsc_hz() from any CPU (the calibration is written once, before the APs
// start; the hypervisor keeps the vCPUs' TSCs in step). The timer interrupt, the wait state and
// the callbacks are the BSP's: wait_until()/sleep_ns() on an AP spin on the clock instead
// (its local APIC timer stays masked), and call_at()/cancel() panic there.
#pragma once

#include <cstdint>

#include "lib/error.h"

namespace blimp::timer {

void init();
uint64_t now_ns();
// Halts (interrupts enabled) until `deadline_ns` or an earlier interrupt; returns on either.
void wait_until(uint64_t deadline_ns);
void sleep_ns(uint64_t ns);
inline void sleep_ms(uint64_t ms) { sleep_ns(ms * 1000000ull); }

}  // namespace blimp::timer

namespace blimp::timer {

// One-shot callbacks run from the timer interrupt (interrupts masked) at or after `deadline_ns`.
// A handful of slots: for periodic device work (balloon stats, reporting delay), not for apps.
using Callback = void (*)(void* context);
ErrorOr<void> call_at(uint64_t deadline_ns, Callback fn, void* context);
void cancel(Callback fn, void* context);

uint64_t tsc_hz();

}  // namespace blimp::timer
