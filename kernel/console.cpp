#include "kernel/console.h"

#include "kernel/arch/io.h"
#include "lib/atomic.h"
#include "lib/format.h"
#include "lib/irq.h"

namespace blimp::console {
namespace {

constexpr uint16_t kCom1 = 0x3f8;
bool g_present = false;

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
  for (unsigned long i = 0; i < len; i++) {
    if (s[i] == '\n') put('\r');
    put(s[i]);
  }
}

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
