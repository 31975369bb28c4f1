#include "drivers/log.h"

#include <cstdarg>

#if defined(BLIMP_GUEST)
#include "kernel/console.h"
#else
#include <cstdio>
#include <cstring>
#endif

namespace blimp::drivers {

#if defined(BLIMP_GUEST)
void vlog(const char* fmt, va_list ap) { kvprintf(fmt, ap); }
#else
namespace {
char g_last[512];
char g_history[16384];
size_t g_history_len;
unsigned g_count;
}  // namespace

void vlog(const char* fmt, va_list ap) {
  vsnprintf(g_last, sizeof g_last, fmt, ap);
  ++g_count;
  size_t n = strlen(g_last);
  if (g_history_len + n >= sizeof g_history) g_history_len = 0;  // keep the newest
  memcpy(g_history + g_history_len, g_last, n + 1);
  g_history_len += n;
  fputs(g_last, stderr);
}
const char* last_log() { return g_last; }
const char* log_history() { return g_history; }
unsigned log_count() { return g_count; }
void clear_log() {
  g_last[0] = 0;
  g_history[0] = 0;
  g_history_len = 0;
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
