/*
 * mm-scale: the Linux anchor's side of the allocator scaling benchmark (bench/mm/smp_scaling.py;
 * Blimp's side is `mmbench threads=N`). PROCS processes, process i pinned to CPU i, each
 * allocating and freeing 4 KiB pages for SECONDS from a common start, as directly as userspace
 * can make Linux's page allocator work:
 *
 *   a private anonymous region of BATCH pages (default 64), mapped once (THP off);
 *   per round: write a tag into the first and last word of every page (each write faults: a page
 *   from the per-CPU free lists or the buddy allocator, zeroed, charged, mapped), read every tag
 *   back, then madvise(MADV_DONTNEED) the region (unmap, TLB flush, the pages freed in a batch).
 *
 * An op is one page faulted in and freed. Processes rather than threads: each has its own
 * mm, so no mmap lock is shared and no TLB shootdown crosses CPUs; what the processes share is
 * the page allocator, which is what the benchmark is after. A tag that does not read back is
 * counted as bad (exit 1).
 *
 *   mm-scale PROCS SECONDS [BATCH]
 * Prints one line per process and a total:
 *   BLIMP-LINUX: mmscale cpu=1 ops=N ns=T ops_per_s=R ns_per_op=P bad=B
 *   BLIMP-LINUX: mmscale total procs=2 ops=N ns=T ops_per_s=R ns_per_op=P bad=B
 * (the total's time runs from the first start to the last end). Exit status 0 when every tag
 * read back, 1 otherwise, 2 on bad usage.
 * Built static by image/linux/build.sh (gcc -static), standard C + GCC atomics only.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MAX_PROCS 64

struct result {
  uint64_t ops, start_ns, end_ns, bad;
  int cpu, ok;
};

/* In a MAP_SHARED mapping made before fork: the start barrier and every process's result. */
struct shared {
  uint64_t arrived;
  uint64_t end_ns; /* 0 until every process has arrived */
  struct result r[MAX_PROCS];
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void worker(struct shared* sh, int i, long batch) {
  struct result* r = &sh->r[i];
  r->cpu = i;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(i, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) {
    perror("mm-scale: sched_setaffinity");
    __atomic_fetch_add(&sh->arrived, 1, __ATOMIC_SEQ_CST);
    return;
  }
  size_t len = (size_t)batch * PAGE;
  char* region = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) {
    perror("mm-scale: mmap");
    __atomic_fetch_add(&sh->arrived, 1, __ATOMIC_SEQ_CST);
    return;
  }
  madvise(region, len, MADV_NOHUGEPAGE);
  /* One round before the clock starts: the page tables stay after MADV_DONTNEED, so the timed
   * rounds allocate data pages only. */
  for (long j = 0; j < batch; j++) region[j * PAGE] = 1;
  madvise(region, len, MADV_DONTNEED);

  __atomic_fetch_add(&sh->arrived, 1, __ATOMIC_SEQ_CST);
  uint64_t end;
  while ((end = __atomic_load_n(&sh->end_ns, __ATOMIC_ACQUIRE)) == 0) __builtin_ia32_pause();

  const uint64_t salt = (uint64_t)i << 56;
  uint64_t seq = 0, ops = 0, bad = 0;
  uint64_t start = now_ns(), t = start;
  while (t < end) {
    for (long j = 0; j < batch; j++) {
      volatile uint64_t* w = (volatile uint64_t*)(region + j * PAGE);
      uint64_t tag = salt ^ ((seq + (uint64_t)j) << 12);
      w[0] = tag;
      w[PAGE / 8 - 1] = ~tag;
    }
    for (long j = 0; j < batch; j++) {
      volatile uint64_t* w = (volatile uint64_t*)(region + j * PAGE);
      uint64_t tag = salt ^ ((seq + (uint64_t)j) << 12);
      if (w[0] != tag || w[PAGE / 8 - 1] != ~tag) bad++;
    }
    if (madvise(region, len, MADV_DONTNEED) != 0) {
      perror("mm-scale: madvise");
      bad++;
      break;
    }
    seq += (uint64_t)batch;
    ops += (uint64_t)batch;
    t = now_ns();
  }
  r->ops = ops;
  r->bad = bad;
  r->start_ns = start;
  r->end_ns = t;
  r->ok = 1;
}

static void line(const char* who, uint64_t ops, uint64_t ns, uint64_t bad) {
  printf("BLIMP-LINUX: mmscale %s ops=%llu ns=%llu ops_per_s=%llu ns_per_op=%.1f bad=%llu\n", who,
         (unsigned long long)ops, (unsigned long long)ns,
         (unsigned long long)(ns ? ops * 1000000000ull / ns : 0), ops ? (double)ns / ops : 0.0,
         (unsigned long long)bad);
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: mm-scale PROCS SECONDS [BATCH]\n");
    return 2;
  }
  int procs = atoi(argv[1]);
  double seconds = atof(argv[2]);
  long batch = argc > 3 ? atol(argv[3]) : 64;
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  if (procs < 1 || procs > MAX_PROCS || procs > online || seconds <= 0 || batch < 1) {
    fprintf(stderr, "mm-scale: PROCS 1..%ld (CPUs online), SECONDS > 0, BATCH >= 1\n", online);
    return 2;
  }
  struct shared* sh =
      mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED) {
    perror("mm-scale: mmap shared");
    return 2;
  }
  fflush(stdout);
  for (int i = 0; i < procs; i++) {
    pid_t pid = fork();
    if (pid < 0) {
      perror("mm-scale: fork");
      return 2;
    }
    if (pid == 0) {
      worker(sh, i, batch);
      _exit(0);
    }
  }
  /* The parent only sets the common end time: it sleeps rather than spins, so it takes no CPU
   * from the workers once they run. */
  while (__atomic_load_n(&sh->arrived, __ATOMIC_SEQ_CST) < (uint64_t)procs) usleep(1000);
  __atomic_store_n(&sh->end_ns, now_ns() + (uint64_t)(seconds * 1e9), __ATOMIC_RELEASE);
  for (int i = 0; i < procs; i++) wait(NULL);

  uint64_t ops = 0, bad = 0, start = UINT64_MAX, end = 0;
  int ok = 1;
  for (int i = 0; i < procs; i++) {
    struct result* r = &sh->r[i];
    if (!r->ok) {
      printf("BLIMP-LINUX: mmscale cpu=%d did not run\n", i);
      ok = 0;
      continue;
    }
    char who[32];
    snprintf(who, sizeof who, "cpu=%d", r->cpu);
    line(who, r->ops, r->end_ns - r->start_ns, r->bad);
    ops += r->ops;
    bad += r->bad;
    if (r->start_ns < start) start = r->start_ns;
    if (r->end_ns > end) end = r->end_ns;
  }
  char who[32];
  snprintf(who, sizeof who, "total procs=%d", procs);
  line(who, ops, end > start ? end - start : 0, bad);
  fflush(stdout);
  return ok && bad == 0 ? 0 : 1;
}
