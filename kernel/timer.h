// Time and sleeping. time is the TSC, calibrated at boot; timed wakeups use the local APIC timer
// in one-shot mode, so an idle guest takes no timer interrupts it does not need.
#pragma once

#include <cstdint>

namespace blimp::timer {

void init();
uint64_t now_ns();
// Halts (interrupts enabled) until `deadline_ns` or an earlier interrupt; returns on either.
void wait_until(uint64_t deadline_ns);
void sleep_ns(uint64_t ns);
inline void sleep_ms(uint64_t ms) { sleep_ns(ms * 1000000ull); }

}  // namespace blimp::timer
