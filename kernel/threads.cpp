#include "kernel/threads.h"

#include <cstdint>

#include "kernel/arch/apic.h"
#include "kernel/arch/cpu.h"
#include "kernel/percpu.h"
#include "kernel/smp.h"
#include "lib/atomic.h"
#include "lib/irq.h"

namespace blimp::threads {
namespace {

enum class State : uint8_t { Idle, Claimed, Posted, Running, Done };

// One per CPU, indexed like percpu. fn, arg and joiner are written by the starter between its
// Claimed CAS and its Posted release store, and read by the AP after its acquire load of Posted.
struct Mailbox {
  Atomic<State> state{State::Idle};
  Fn fn = nullptr;
  void* arg = nullptr;
  size_t joiner = 0;  // the CPU that started the thread: woken when it is done
};
constinit Mailbox g_mailboxes[percpu::kMaxCpus];
constinit Atomic<IdleStep> g_idle_step{nullptr};

void wake(size_t cpu) {
  // Fails only if the local APIC never reports the IPI sent; the waiter then waits for its next
  // interrupt instead, and nobody waits without one for long: an AP's mailbox is looked at
  // again after every interrupt, and a joining BSP has its timer and devices.
  (void)arch::apic::send_fixed(smp::apic_id(cpu), arch::apic::kWakeVector);
}

}  // namespace

ErrorOr<void> start(size_t cpu, Fn fn, void* arg) {
  const size_t me = percpu::cpu_index();
  // The BSP runs the app and has no idle loop to take a thread.
  if (cpu == me || cpu == 0 || !fn) return Error::InvalidArgument;
  if (cpu >= percpu::kMaxCpus || !smp::is_online(cpu)) return Error::NotFound;
  Mailbox& m = g_mailboxes[cpu];
  State expected = State::Idle;
  if (!m.state.compare_exchange(expected, State::Claimed, MemoryOrder::Acquire)) return Error::Busy;
  m.fn = fn;
  m.arg = arg;
  m.joiner = me;
  m.state.store(State::Posted, MemoryOrder::Release);
  wake(cpu);
  return {};
}

ErrorOr<void> join(size_t cpu) {
  if (cpu == 0 || cpu >= percpu::kMaxCpus) return Error::InvalidArgument;
  Mailbox& m = g_mailboxes[cpu];
  const State s = m.state.load(MemoryOrder::Acquire);
  if (s == State::Idle || s == State::Claimed || m.joiner != percpu::cpu_index())
    return Error::InvalidArgument;
  for (;;) {
    const uint64_t flags = irq_save();
    if (m.state.load(MemoryOrder::Acquire) == State::Done) {
      irq_restore(flags);
      break;
    }
    if (flags & (1u << 9)) {
      // The AP's wake-up cannot slip in between the look and the hlt (see idle_loop). Device
      // interrupts and deferred work keep running meanwhile.
      arch::wait_for_interrupt();
    } else {
      cpu_relax();
    }
    irq_restore(flags);
  }
  m.state.store(State::Idle, MemoryOrder::Release);
  return {};
}

void set_idle_step(IdleStep step) {
  g_idle_step.store(step, MemoryOrder::Release);
  const size_t me = percpu::cpu_index();
  for (size_t cpu = 1; cpu < smp::cpu_count() && cpu < percpu::kMaxCpus; cpu++) {
    if (cpu != me && smp::is_online(cpu)) wake(cpu);
  }
}

void idle_loop() {
  const size_t cpu = percpu::cpu_index();
  Mailbox& m = g_mailboxes[cpu];
  for (;;) {
    asm volatile("cli" ::: "memory");
    if (m.state.load(MemoryOrder::Acquire) == State::Posted) {
      m.state.store(State::Running, MemoryOrder::Relaxed);
      m.fn(m.arg);
      // Read before Done: from then on the starter may join and start the next thread.
      const size_t joiner = m.joiner;
      m.state.store(State::Done, MemoryOrder::Release);
      wake(joiner);
      continue;
    }
    if (IdleStep step = g_idle_step.load(MemoryOrder::Acquire)) {
      step(cpu);
      // An interrupt window between steps: the wake-up IPI of a start() (and anything else sent
      // here) is taken now instead of piling up while the loop never halts.
      asm volatile("sti; nop; cli" ::: "memory");
      continue;
    }
    // sti; hlt: an IPI that arrived since the cli is pending and ends the hlt at once.
    arch::wait_for_interrupt();
  }
}

}  // namespace blimp::threads
