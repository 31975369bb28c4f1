// Kernel logging to the serial console (COM1). kprintf is safe from interrupt handlers: it
// formats into a stack buffer without allocating and writes with interrupts masked.
#pragma once

#include <cstdarg>

namespace blimp::console {

void init();
void write(const char* s, unsigned long len);

}  // namespace blimp::console

__attribute__((format(printf, 1, 2))) void kprintf(const char* fmt, ...);
void kvprintf(const char* fmt, va_list ap);
