/* Host cost of discarding 1 GiB of backed anonymous memory: one MADV_DONTNEED per 4 KiB page
 * (stock QEMU's inflate path) vs one per run of R pages (coalesce-discard), as QEMU's
 * ram_block_discard_range() does for anonymous RAM.
 *   cc -O2 -o madvise_cost madvise_cost.c && ./madvise_cost [MiB] */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
  size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
  size_t len = mib << 20, pages = len / 4096;
  size_t runs[] = {1, 16, 256, 4096, pages};
  char* p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  printf(
      "| pages per discard call | calls per GiB | seconds per GiB | GiB/s |\n|---|---|---|---|\n");
  for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++) {
    size_t run = runs[r], calls = 0;
    memset(p, 0xa5, len); /* back every page */
    double t0 = now();
    for (size_t off = 0; off < pages; off += run) {
      size_t n = off + run <= pages ? run : pages - off;
      if (madvise(p + off * 4096, n * 4096, MADV_DONTNEED)) {
        perror("madvise");
        return 1;
      }
      calls++;
    }
    double dt = now() - t0;
    double gib = (double)len / (1 << 30);
    printf("| %zu | %.0f | %.4f | %.1f |\n", run, calls / gib, dt / gib, gib / dt);
  }
  return 0;
}
