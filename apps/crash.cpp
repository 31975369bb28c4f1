// app=crash: deliberately faults so the exception report and failure exit can be tested.
// crash mode=null (default) writes through a null pointer; mode=ud executes an invalid opcode;
// mode=panic calls panic().
#include <cstdio>
#include <cstring>

#include "apps/app.h"
#include "kernel/panic.h"

namespace {

[[gnu::noinline]] void write_through(volatile int* p) { *p = 42; }

int crash_main(int argc, char** argv) {
  const char* mode = "null";
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "mode=", 5) == 0) mode = argv[i] + 5;
  }
  printf("crash: about to fault (mode=%s)\n", mode);
  fflush(stdout);
  if (strcmp(mode, "ud") == 0) asm volatile("ud2");
  if (strcmp(mode, "panic") == 0) panic("crash app asked for a panic");
  volatile int* volatile null = nullptr;
  write_through(null);
  printf("crash: still alive?!\n");
  return 0;
}

}  // namespace

BLIMP_APP(crash, "crash", "fault on purpose (mode=null|ud|panic) to test fault reporting",
          crash_main);
