// Driver logging. In the guest this is kprintf; in host builds it goes to stderr and the last
// message is kept so unit tests can check that a misbehaving device was reported clearly.
#pragma once

#include <cstdarg>

namespace blimp::drivers {

__attribute__((format(printf, 1, 2))) void log(const char* fmt, ...);
void vlog(const char* fmt, va_list ap);

#if defined(BLIMP_HOST)
// Host builds only: the most recent message and how many were logged.
const char* last_log();
// Everything logged since clear_log() (the newest 16 KiB).
const char* log_history();
unsigned log_count();
void clear_log();
#endif

}  // namespace blimp::drivers
