// Threads on the application processors (issue 17, step 2): run a function on CPU n, wait for it.
// One thread per CPU at a time, no scheduler, no preemption: a thread runs until it returns.
//
//   threads::start(1, worker, &state);   // worker(&state) now runs on CPU 1
//   ...                                   // the caller goes on (on its own CPU)
//   threads::join(1);                     // back when worker returned
//
// # The idle loop and the mailbox
// Every AP that came online sits in idle_loop(): with interrupts masked it looks at its mailbox;
// empty, it waits in `sti; hlt` (sti's one-instruction interrupt shadow means a wake-up IPI that
// arrives after the look is taken by the hlt, not lost). start() fills the mailbox and sends
// arch::apic::kWakeVector to that CPU; the AP runs the function, marks the mailbox done and sends
// the same vector to the CPU that started it, so that a join() waiting in `hlt` wakes up.
//
//   Idle --start(): CAS--> Claimed --fn, arg written--> Posted --AP takes it--> Running
//   Running --fn returned--> Done --join()--> Idle
//
// Why halt rather than spin: under TCG (this project's usual accelerator, on a host with fewer
// cores than vCPUs) a spinning idle AP keeps its vCPU thread busy and takes host time from the
// vCPU doing the work; a halted vCPU sleeps in QEMU until the IPI. An IPI costs the sender an
// ICR write and the receiver one interrupt: nothing next to the work a thread is started for.
//
// # Idle work
// set_idle_step() gives every AP something to do instead of halting while its mailbox is empty
// (smp.background=, mm/background_churn.h): the idle loop then calls step(cpu) again and again,
// with interrupts masked, opening an interrupt window and looking at the mailbox between two
// calls, so a thread started there waits for at most one step. A step must be short (well under
// a millisecond) and may do what a thread may do.
//
// # What a thread may do (on an AP)
// A thread runs with interrupts masked (an AP takes no device interrupt: they all go to CPU 0),
// on its CPU's 16 KiB stack. It may use: the page allocator and the heap (malloc/free/new), which
// take a real spinlock; volatile memory (pin/unpin are per region); kprintf (the console's
// spinlock); timer::now_ns(); timer::sleep_ns() (it spins on an AP); power::exit(), panic() and
// power::stop_requested(). An allocation on an AP never reclaims (interrupts masked: see
// PageAllocator's "Locking"): the shrinkers, the cache demand and the balloon's deflate-on-OOM
// are the BSP's, so an AP's allocation fails with NoMemory where one on the BSP would first have
// reclaimed. Everything that talks to a device is the BSP's: the drivers, deferred work
// (work::schedule is allowed and hands the work to the BSP), timer callbacks (call_at), sharing
// hints. Not newlib's stdio or anything else keeping state in its one `_reent` (errno, strtok,
// rand): newlib is built without locks. A fault on an AP stops the VM like one on the BSP.
#pragma once

#include <cstddef>

#include "lib/error.h"

namespace blimp::threads {

using Fn = void (*)(void* arg);

// Starts fn(arg) on CPU `cpu` (an AP: 1 .. smp::cpu_count()-1). InvalidArgument: `cpu` is 0
// (the BSP runs the app and has no idle loop) or the caller's own; NotFound: no such CPU online;
// Busy: that CPU's thread has not been joined yet. From any CPU, interrupts enabled or not.
ErrorOr<void> start(size_t cpu, Fn fn, void* arg);

// Waits until the thread started on `cpu` has returned, and makes the CPU available again. From
// the CPU that started it (halting between interrupts when they are enabled, else spinning);
// InvalidArgument if no thread was started there.
ErrorOr<void> join(size_t cpu);

// Work for idle APs (see "Idle work"); nullptr (the default) halts them again. From any CPU, at
// any time: every online AP is sent the wake-up IPI, so a halted one picks the step up at once
// and a busy one when its thread returns.
using IdleStep = void (*)(size_t cpu);
void set_idle_step(IdleStep step);

// An AP's life after bring-up (kernel/smp.cpp calls it once it is online). Never returns.
[[noreturn]] void idle_loop();

}  // namespace blimp::threads
