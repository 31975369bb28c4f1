// Host stand-ins for the kernel's console and panic, for the mm unit tests. panic throws so that
// tests can check that misuse is caught (EXPECT_THROW) without a death test per case.
#include <cstdarg>
#include <cstdio>
#include <stdexcept>

#include "kernel/console.h"
#include "kernel/panic.h"

void kvprintf(const char* fmt, va_list ap) {
  vfprintf(stderr, fmt, ap);
}

void kprintf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kvprintf(fmt, ap);
  va_end(ap);
}

void panic(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  throw std::runtime_error(buf);
}
