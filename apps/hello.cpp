// app=hello: the smallest proof that the C library works: printf through newlib, floating point
// formatting included, heap allocation, and a clean exit.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "apps/app.h"

namespace {

int hello_main(int argc, char** argv) {
  printf("Hello from blimp! (%d argument%s)\n", argc - 1, argc == 2 ? "" : "s");
  for (int i = 1; i < argc; i++) printf("  argv[%d] = %s\n", i, argv[i]);
  double pi = 3.14159265358979;
  printf("newlib printf: pi = %f, %.3e, %g\n", pi, pi * 1e6, pi / 1e6);
  char* copy = static_cast<char*>(malloc(64));
  if (!copy) {
    printf("hello: malloc failed\n");
    return 1;
  }
  strcpy(copy, "heap works");
  printf("%s\n", copy);
  free(copy);
  return 0;
}

}  // namespace

BLIMP_APP(hello, "hello", "print a greeting through newlib and exit", hello_main);
