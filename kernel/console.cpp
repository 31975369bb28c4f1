#include "kernel/console.h"

#include "kernel/arch/apic.h"
#include "kernel/arch/io.h"
#include "lib/atomic.h"
#include "lib/format.h"
#include "lib/irq.h"

namespace blimp::console {
namespace {

constexpr uint16_t kCom1 = 0x3f8;
bool g_present = false;
bool g_shared = false;
// The CPU writing (its local APIC ID + 1), 0 when none. The owner is recorded so that a CPU that
// faults or takes an NMI in the middle of a write can still report it: it writes on, unlocked,
// instead of waiting for itself forever.
Atomic<uint32_t> g_owner{0};
// How long to wait for another CPU's write before writing anyway: a CPU that died holding the
// lock must not silence the others' panic reports. Far above any one line's worth of polling.
constexpr uint64_t kMaxSpins = 200000000;

// Takes the console for this CPU; false when it already held it (nested write) or gave up
// waiting, in which case the caller must not release it.
bool lock() {
  const uint32_t me = arch::apic::local_id() + 1;
  if (g_owner.load(MemoryOrder::Relaxed) == me) return false;
  for (uint64_t spins = 0; spins < kMaxSpins; spins++) {
    uint32_t expected = 0;
    if (g_owner.compare_exchange(expected, me, MemoryOrder::Acquire)) return true;
    cpu_relax();
  }
  return false;
}

void put(char c) {
  if (!g_present) return;
  // Transmit-holding-register empty (LSR bit 5); bounded so a wedged UART cannot hang us.
  for (int i = 0; i < 100000 && !(arch::inb(kCom1 + 5) & 0x20); i++) cpu_relax();
  arch::outb(kCom1, static_cast<uint8_t>(c));
}

}  // namespace

void init() {
  arch::outb(kCom1 + 1, 0x00);  // no UART interrupts: we poll on output
  arch::outb(kCom1 + 3, 0x80);  // DLAB
  arch::outb(kCom1 + 0, 0x01);  // 115200 baud
  arch::outb(kCom1 + 1, 0x00);
  arch::outb(kCom1 + 3, 0x03);  // 8N1
  arch::outb(kCom1 + 2, 0xc7);  // FIFO on, cleared
  arch::outb(kCom1 + 4, 0x03);  // DTR | RTS
  // An absent UART reads back 0xff from the line status register.
  g_present = arch::inb(kCom1 + 5) != 0xff;
}

void write(const char* s, unsigned long len) {
  IrqGuard guard;  // keep lines from interleaving with interrupt-time logging
  const bool locked = g_shared && lock();
  for (unsigned long i = 0; i < len; i++) {
    if (s[i] == '\n') put('\r');
    put(s[i]);
  }
  if (locked) g_owner.store(0, MemoryOrder::Release);
}

void share_between_cpus() { g_shared = true; }

}  // namespace blimp::console

void kvprintf(const char* fmt, va_list ap) {
  char buf[512];
  size_t n = blimp::vformat(buf, sizeof buf, fmt, ap);
  if (n >= sizeof buf) n = sizeof buf - 1;
  blimp::console::write(buf, n);
}

void kprintf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kvprintf(fmt, ap);
  va_end(ap);
}
