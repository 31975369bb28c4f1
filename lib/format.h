// A small printf-style formatter that never allocates, for kernel logging from any context
// (interrupt handlers, the allocator, panic). Supports %d %i %u %x %X %o %p %s %c %% with the
// flags '-', '0', ' ', '+', '#', width, precision (also '*'), and length modifiers hh h l ll z j t.
// Floating point is deliberately absent: use newlib's printf from app code.
#pragma once

#include <cstdarg>
#include <cstddef>

namespace blimp {

// Writes at most size-1 characters plus a NUL; returns the length the full output would have.
size_t vformat(char* buf, size_t size, const char* fmt, va_list ap);
__attribute__((format(printf, 3, 4))) size_t format(char* buf, size_t size, const char* fmt, ...);

}  // namespace blimp
