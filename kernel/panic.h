// Fatal errors: print, backtrace, leave QEMU with a failure status.
#pragma once

[[noreturn]] __attribute__((format(printf, 1, 2))) void panic(const char* fmt, ...);

#define BLIMP_ASSERT(cond)                                                         \
  do {                                                                             \
    if (!(cond)) panic("assertion failed: %s (%s:%d)", #cond, __FILE__, __LINE__); \
  } while (0)
