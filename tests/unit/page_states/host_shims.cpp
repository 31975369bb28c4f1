// Host stand-ins for the kernel console and panic (the allocator calls them).
#include <cstdarg>
#include <cstdio>
#include <cstdlib>

#include "kernel/console.h"
#include "kernel/panic.h"

void kvprintf(const char* fmt, va_list ap) { vfprintf(stderr, fmt, ap); }

void kprintf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kvprintf(fmt, ap);
  va_end(ap);
}

void panic(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  abort();
}
