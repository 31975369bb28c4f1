// The host stand-in for what guest code uses from kernel/ (tests/unit/host_shims.cpp, the one
// shim file every unit test links, and bench/mm too), and the knobs tests turn on it.
//
// Console: kprintf goes to a string the tests search, and to stderr unless set_echo(false).
// Panic: throws std::runtime_error with the message, so tests can check that misuse is caught
// (EXPECT_THROW) without a death test per case.
//
// The fake clock: on the host irq_save() reports interrupts off, so a driver's wait spins with
// cpu_relax() and reads timer::now_ns() each time round. Every read of the clock therefore
// advances it by one tick (1 ms) and then "lets the world run": the poll hook (the fake device
// acts, its interrupts are delivered) and the timer callbacks that are due. A 20 s
// balloon.reset_ms passes in 20 000 polls. wait_until() jumps to its deadline.
//
// Work (kernel/deferred_work.h) is a FIFO; run_pending() runs it unless work is already running.
#pragma once

#include <cstdint>
#include <string>

namespace blimp::test::kernel {

uint64_t now();  // the fake clock, without advancing it
void set_now(uint64_t ns);
void set_tick(uint64_t ns);  // what one read of timer::now_ns() advances the clock by
void set_poll_hook(void (*fn)(void* ctx), void* ctx);
// One step of the world: the poll hook, then the timer callbacks that are due.
void poll();
size_t timers_armed();
void reset();  // drops every timer, queued work and the log

bool work_pending();
std::string& log();
bool log_contains(const char* s);
// Whether kprintf also writes to stderr (default: yes).
void set_echo(bool on);

}  // namespace blimp::test::kernel
