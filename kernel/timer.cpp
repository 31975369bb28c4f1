#include "kernel/timer.h"

#include <utility>

#include "kernel/arch/apic.h"
#include "kernel/arch/cpu.h"
#include "kernel/arch/io.h"
#include "kernel/console.h"
#include "kernel/interrupts.h"
#include "kernel/panic.h"
#include "kernel/percpu.h"
#include "lib/atomic.h"
#include "lib/irq.h"
#include "lib/per_boot.h"

namespace blimp::interrupts {
void set_fixed_handler(uint8_t vector, Handler handler, void* context);
}

namespace blimp::timer {
namespace {

constexpr uint64_t kPitHz = 1193182;  // the 8254's input clock
// Calibrated at boot, so they differ in every VM (lib/per_boot.h).
BLIMP_PER_BOOT uint64_t g_tsc_hz = 0;
BLIMP_PER_BOOT uint64_t g_tsc_base = 0;
BLIMP_PER_BOOT uint64_t g_lapic_ticks_per_ms = 0;

struct Event {
  uint64_t deadline;
  Callback fn;
  void* context;
};
constexpr int kMaxEvents = 16;
// Absolute deadlines: per boot as well.
BLIMP_PER_BOOT Event g_events[kMaxEvents];
BLIMP_PER_BOOT uint64_t g_wait_deadline = 0;  // the deadline of a wait_until in progress, or 0

uint16_t pit_read() {
  arch::outb(0x43, 0x00);  // latch channel 0
  uint8_t lo = arch::inb(0x40);
  uint8_t hi = arch::inb(0x40);
  return uint16_t(lo | (hi << 8));
}

// Counts TSC cycles over ~20 ms of PIT time. Returns 0 if the PIT does not count.
uint64_t calibrate_tsc_with_pit() {
  arch::outb(0x43, 0x34);  // channel 0, lo/hi, mode 2 (rate generator)
  arch::outb(0x40, 0xff);
  arch::outb(0x40, 0xff);
  uint16_t last = pit_read();
  uint64_t start_tsc = arch::rdtsc(), elapsed = 0;
  const uint64_t target = kPitHz / 50;
  for (uint64_t spins = 0; elapsed < target; spins++) {
    uint16_t now = pit_read();
    elapsed += uint16_t(last - now);  // counts down, wraps at 0xffff
    last = now;
    if (spins > 2000000 && elapsed == 0) return 0;
  }
  uint64_t cycles = arch::rdtsc() - start_tsc;
  return cycles * kPitHz / elapsed;
}

uint64_t earliest_deadline() {
  uint64_t d = g_wait_deadline;
  for (auto& e : g_events) {
    if (e.fn && (d == 0 || e.deadline < d)) d = e.deadline;
  }
  return d;
}

void program(uint64_t deadline) {
  if (deadline == 0) {
    arch::apic::timer_stop();
    return;
  }
  uint64_t now = now_ns();
  uint64_t ticks = deadline > now ? (deadline - now) * g_lapic_ticks_per_ms / 1000000 + 1 : 1;
  arch::apic::timer_one_shot(ticks > 0xffffffffull ? 0xffffffffu : uint32_t(ticks));
}

void on_timer_interrupt(void*) {
  uint64_t now = now_ns();
  for (auto& e : g_events) {
    if (e.fn && e.deadline <= now) {
      Callback fn = e.fn;
      e.fn = nullptr;
      fn(e.context);  // may re-arm itself through call_at
    }
  }
  program(earliest_deadline());
}

}  // namespace

void init() {
  g_tsc_hz = calibrate_tsc_with_pit();
  if (g_tsc_hz == 0) {
    uint32_t a, b, c, d;
    arch::cpuid(0, 0, a, b, c, d);
    uint32_t max_leaf = a;
    if (max_leaf >= 0x16) {
      arch::cpuid(0x16, 0, a, b, c, d);
      g_tsc_hz = uint64_t(a & 0xffff) * 1000000;
    }
    if (g_tsc_hz == 0) g_tsc_hz = 2000000000;
    kprintf("timer: no PIT to calibrate against; assuming a %lu MHz TSC\n", g_tsc_hz / 1000000);
  }
  g_tsc_base = arch::rdtsc();
  // LAPIC timer rate against the TSC: three ~10 ms samples, each the ratio of the two counters
  // read back to back (the spin can overshoot by a lot when the host deschedules the vCPU, so
  // the loop's target is not the measurement), and the median of the three.
  arch::apic::timer_stop();
  asm volatile("cli");
  uint64_t samples[3];
  for (auto& sample : samples) {
    arch::apic::timer_one_shot(0xffffffffu);
    uint32_t first = arch::apic::timer_current();
    uint64_t start = arch::rdtsc();
    while (arch::rdtsc() - start < g_tsc_hz / 100) cpu_relax();
    uint32_t last = arch::apic::timer_current();
    uint64_t cycles = arch::rdtsc() - start;
    arch::apic::timer_stop();
    sample = uint64_t(first - last) * (g_tsc_hz / 1000) / (cycles ? cycles : 1);
  }
  if (samples[0] > samples[1]) std::swap(samples[0], samples[1]);
  if (samples[1] > samples[2]) std::swap(samples[1], samples[2]);
  if (samples[0] > samples[1]) std::swap(samples[0], samples[1]);
  g_lapic_ticks_per_ms = samples[1] ? samples[1] : 1;
  interrupts::set_fixed_handler(arch::apic::kTimerVector, on_timer_interrupt, nullptr);
  kprintf("timer: TSC %lu MHz, LAPIC timer %lu kHz\n", g_tsc_hz / 1000000, g_lapic_ticks_per_ms);
}

uint64_t tsc_hz() { return g_tsc_hz; }

uint64_t now_ns() {
  uint64_t cycles = arch::rdtsc() - g_tsc_base;
  // Split to avoid overflowing 64 bits after ~9 s at GHz rates.
  return (cycles / g_tsc_hz) * 1000000000ull + (cycles % g_tsc_hz) * 1000000000ull / g_tsc_hz;
}

void wait_until(uint64_t deadline_ns) {
  if (percpu::cpu_index() != 0) {
    // An AP: g_wait_deadline and the events are the BSP's, and this CPU's timer is masked.
    while (now_ns() < deadline_ns) cpu_relax();
    return;
  }
  uint64_t flags = irq_save();
  if (now_ns() < deadline_ns) {
    uint64_t outer = g_wait_deadline;
    g_wait_deadline = deadline_ns;
    program(earliest_deadline());
    arch::wait_for_interrupt();  // sti; hlt: returns after any interrupt was handled
    asm volatile("cli");
    g_wait_deadline = outer;
    program(earliest_deadline());
  }
  irq_restore(flags);
}

void sleep_ns(uint64_t ns) {
  uint64_t deadline = now_ns() + ns;
  while (now_ns() < deadline) wait_until(deadline);
}

ErrorOr<void> call_at(uint64_t deadline_ns, Callback fn, void* context) {
  BLIMP_ASSERT(percpu::cpu_index() == 0);  // the events and the timer interrupt are the BSP's
  IrqGuard guard;
  for (auto& e : g_events) {
    if (!e.fn) {
      e = {deadline_ns, fn, context};
      program(earliest_deadline());
      return {};
    }
  }
  return Error::Busy;
}

void cancel(Callback fn, void* context) {
  BLIMP_ASSERT(percpu::cpu_index() == 0);
  IrqGuard guard;
  for (auto& e : g_events) {
    if (e.fn == fn && e.context == context) e.fn = nullptr;
  }
  program(earliest_deadline());
}

}  // namespace blimp::timer
