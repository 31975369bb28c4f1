// Kernel logging to the serial console (COM1). kprintf is safe from interrupt handlers: it
// formats into a stack buffer without allocating and writes with interrupts masked (and, once
// several CPUs run, under a spinlock).
#pragma once

#include <cstdarg>

namespace blimp::console {

void init();
void write(const char* s, unsigned long len);
// From now on other CPUs may write too: each write takes a spinlock over the UART, so lines
// never interleave across CPUs. Called by the BSP before it starts the first AP. Until then (and
// with smp=off) a write only masks interrupts, as on one CPU it always did.
void share_between_cpus();

}  // namespace blimp::console

__attribute__((format(printf, 1, 2))) void kprintf(const char* fmt, ...);
void kvprintf(const char* fmt, va_list ap);
