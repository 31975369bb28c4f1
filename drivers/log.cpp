#include "drivers/log.h"

#include <cstdarg>

#if defined(BLIMP_GUEST)
#include "kernel/console.h"
#else
#include <cstdio>
#endif

namespace blimp::drivers {

#if defined(BLIMP_GUEST)
void vlog(const char* fmt, va_list ap) { kvprintf(fmt, ap); }
#else
namespace {
char g_last[512];
unsigned g_count;
}  // namespace

void vlog(const char* fmt, va_list ap) {
  vsnprintf(g_last, sizeof g_last, fmt, ap);
  ++g_count;
  fputs(g_last, stderr);
}
const char* last_log() { return g_last; }
unsigned log_count() { return g_count; }
void clear_log() {
  g_last[0] = 0;
  g_count = 0;
}
#endif

void log(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

}  // namespace blimp::drivers
