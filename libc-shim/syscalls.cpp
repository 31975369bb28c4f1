// newlib's system calls (the underscore names newlib calls when built with
// -UMISSING_SYSCALL_NAMES and --disable-newlib-supplied-syscalls), on top of the kernel.
// There is no file system: fds 0-2 are the console, everything else fails with a clear errno.
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/times.h>
#include <cerrno>
#include <cstdint>

#include "kernel/console.h"
#include "kernel/power.h"
#include "kernel/timer.h"

#undef errno
extern int errno;

extern "C" {

int _write(int fd, const char* buf, int len) {
  if (fd != 1 && fd != 2) {
    errno = EBADF;
    return -1;
  }
  blimp::console::write(buf, static_cast<unsigned long>(len));
  return len;
}

int _read(int fd, char*, int) {
  if (fd == 0) return 0;  // no console input: end of file
  errno = EBADF;
  return -1;
}

int _close(int fd) { return fd <= 2 ? 0 : (errno = EBADF, -1); }
int _fstat(int fd, struct stat* st) {
  if (fd > 2) {
    errno = EBADF;
    return -1;
  }
  st->st_mode = S_IFCHR;
  return 0;
}
int _isatty(int fd) { return fd <= 2; }
int _lseek(int, int, int) {
  errno = ESPIPE;
  return -1;
}
int _open(const char*, int, ...) {
  errno = ENOENT;
  return -1;
}
int _stat(const char*, struct stat*) {
  errno = ENOENT;
  return -1;
}
int _link(const char*, const char*) {
  errno = EMLINK;
  return -1;
}
int _unlink(const char*) {
  errno = ENOENT;
  return -1;
}
// newlib declares unlink() but, built without its supplied syscalls, does not define it
// (SQLite's speedtest1 calls it to remove a stale database).
int unlink(const char* path) { return _unlink(path); }
int _getpid() { return 1; }
int _kill(int, int) {
  errno = EINVAL;
  return -1;
}
int _fork() {
  errno = ENOSYS;
  return -1;
}
int _execve(const char*, char* const*, char* const*) {
  errno = ENOSYS;
  return -1;
}
int _wait(int*) {
  errno = ECHILD;
  return -1;
}
void* _sbrk(intptr_t) {
  // malloc is routed to the kernel heap (libc-shim/malloc.cpp); nothing should grow a break.
  errno = ENOMEM;
  return reinterpret_cast<void*>(-1);
}
int _gettimeofday(struct timeval* tv, void*) {
  uint64_t ns = blimp::timer::now_ns();
  tv->tv_sec = static_cast<time_t>(ns / 1000000000ull);
  tv->tv_usec = static_cast<suseconds_t>((ns % 1000000000ull) / 1000);
  return 0;
}
clock_t _times(struct tms* t) {
  clock_t ticks = static_cast<clock_t>(blimp::timer::now_ns() / (1000000000ull / CLOCKS_PER_SEC));
  if (t) {
    t->tms_utime = ticks;
    t->tms_stime = 0;
    t->tms_cutime = 0;
    t->tms_cstime = 0;
  }
  return ticks;
}
[[noreturn]] void _exit(int status) { blimp::power::exit(status); }

}  // extern "C"
