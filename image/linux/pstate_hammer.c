/*
 * pstate-hammer: the guest half of the Blimp page-state protocol
 * (docs/spec-virtio-balloon-blimp.md section 4), run inside the anchor Linux guest on memory
 * that Linux does not manage (above mem=), through /dev/mem, while the host sweeps the same
 * array. It checks the protocol's safety end to end under real TCG vCPUs:
 *   - a page the guest made STABLE never loses a write (its pattern is always intact);
 *   - a page found DISCARDED_x reads as zeros;
 *   - a VOLATILE page is either intact when pinned, or reported lost (and zero).
 *
 *   pstate-hammer ARRAY_GPA DATA_PFN NPAGES ITERATIONS SEED
 * Prints "BLIMP-HAMMER: ..." lines; exit status 0 when no violation was seen.
 * Built static by image/linux/build.sh (gcc -static), standard C + GCC atomics only.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum {
  STABLE = 0x00,
  UNUSED = 0x01,
  VOLATILE = 0x03,
  DISCARDING_U = 0x41,
  DISCARDING_V = 0x43,
  DISCARDED_U = 0x81,
  DISCARDED_V = 0x83
};
enum { OWNED, FREED, VOL };
#define WORDS 16
#define PAGE 4096

static uint64_t rng;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static volatile uint64_t* word(uint8_t* data, uint64_t i, int w) {
  return (volatile uint64_t*)(data + i * PAGE + (uint64_t)w * (PAGE / WORDS));
}

static void write_pattern(uint8_t* data, uint64_t i, uint64_t tag) {
  for (int w = 0; w < WORDS; w++) {
    *word(data, i, w) = tag * 0x9E3779B97F4A7C15ull + (uint64_t)w;
  }
}

static int check_pattern(uint8_t* data, uint64_t i, uint64_t tag) {
  for (int w = 0; w < WORDS; w++) {
    if (*word(data, i, w) != tag * 0x9E3779B97F4A7C15ull + (uint64_t)w) {
      return 0;
    }
  }
  return 1;
}

static int is_zero(uint8_t* data, uint64_t i) {
  for (int w = 0; w < WORDS; w++) {
    if (*word(data, i, w) != 0) {
      return 0;
    }
  }
  return 1;
}

static int cas(uint8_t* p, uint8_t expect, uint8_t desired) {
  return __atomic_compare_exchange_n(p, &expect, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* Take a page the guest gave up (UNUSED or VOLATILE) back to STABLE. Returns 1 if the host
 * discarded it (content is zero), 0 if intact, -1 on a protocol violation. */
static int take(uint8_t* st, uint64_t* spins) {
  for (;;) {
    uint8_t v = __atomic_load_n(st, __ATOMIC_ACQUIRE);
    switch (v) {
      case UNUSED:
      case VOLATILE:
        if (cas(st, v, STABLE)) {
          return 0;
        }
        break;
      case DISCARDED_U:
      case DISCARDED_V:
        if (cas(st, v, STABLE)) {
          return 1;
        }
        break;
      case DISCARDING_U:
      case DISCARDING_V:
        (*spins)++; /* the host owns it for one madvise: wait */
        break;
      default: return -1;
    }
  }
}

int main(int argc, char** argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: %s ARRAY_GPA DATA_PFN NPAGES ITERATIONS SEED\n", argv[0]);
    return 2;
  }
  uint64_t array_gpa = strtoull(argv[1], NULL, 0), data_pfn = strtoull(argv[2], NULL, 0);
  uint64_t n = strtoull(argv[3], NULL, 0), iters = strtoull(argv[4], NULL, 0);
  rng = strtoull(argv[5], NULL, 0) | 1;
  int fd = open("/dev/mem", O_RDWR | O_SYNC);
  if (fd < 0) {
    perror("open /dev/mem");
    return 2;
  }
  uint64_t st_off = array_gpa + data_pfn, st_base = st_off & ~(uint64_t)(PAGE - 1);
  size_t st_len = ((st_off + n + PAGE - 1) & ~(uint64_t)(PAGE - 1)) - st_base;
  uint8_t* stm = mmap(NULL, st_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, st_base);
  uint8_t* data = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, data_pfn * PAGE);
  if (stm == MAP_FAILED || data == MAP_FAILED) {
    perror("mmap /dev/mem");
    return 2;
  }
  uint8_t* states = stm + (st_off - st_base);
  uint8_t* local = calloc(n, 1);
  uint64_t* tag = calloc(n, sizeof(uint64_t));
  uint64_t lost_writes = 0, bad_zero = 0, bad_state = 0, discarded_unused = 0;
  uint64_t lost_volatile = 0, intact_volatile = 0, spins = 0, reused = 0;

  for (uint64_t i = 0; i < n; i++) { /* start: every page STABLE and ours */
    __atomic_store_n(&states[i], STABLE, __ATOMIC_RELEASE);
    tag[i] = next();
    write_pattern(data, i, tag[i]);
    local[i] = OWNED;
  }
  printf("BLIMP-HAMMER: start pages=%llu iterations=%llu\n", (unsigned long long)n,
         (unsigned long long)iters);
  fflush(stdout);
  time_t t0 = time(NULL);
  for (uint64_t it = 0; it < iters; it++) {
    uint64_t i = next() % n;
    int r;
    switch (local[i]) {
      case OWNED:
        if (!check_pattern(data, i, tag[i])) {
          lost_writes++; /* the host touched a STABLE page */
        }
        if (next() & 1) {
          __atomic_store_n(&states[i], UNUSED, __ATOMIC_RELEASE);
          local[i] = FREED;
        } else {
          __atomic_store_n(&states[i], VOLATILE, __ATOMIC_RELEASE);
          local[i] = VOL;
        }
        break;
      case FREED:
      case VOL:
        r = take(&states[i], &spins);
        if (r < 0) {
          bad_state++;
          __atomic_store_n(&states[i], STABLE, __ATOMIC_RELEASE);
        } else if (r == 1) {
          if (!is_zero(data, i)) {
            bad_zero++; /* discarded but not zero */
          }
          if (local[i] == FREED) {
            discarded_unused++;
          } else {
            lost_volatile++; /* the app would recompute it */
          }
        } else if (local[i] == VOL) {
          if (check_pattern(data, i, tag[i])) {
            intact_volatile++;
          } else {
            lost_writes++; /* pinned intact but content changed */
          }
        } else {
          reused++;
        }
        tag[i] = next();
        write_pattern(data, i, tag[i]); /* use the page */
        local[i] = OWNED;
        break;
    }
  }
  for (uint64_t i = 0; i < n; i++) { /* final check of what we own */
    if (local[i] == OWNED && !check_pattern(data, i, tag[i])) {
      lost_writes++;
    }
  }
  printf(
      "BLIMP-HAMMER: done seconds=%ld lost_writes=%llu bad_zero=%llu bad_state=%llu "
      "discarded_unused=%llu lost_volatile=%llu intact_volatile=%llu reused_intact=%llu "
      "spins=%llu\n",
      (long)(time(NULL) - t0), (unsigned long long)lost_writes, (unsigned long long)bad_zero,
      (unsigned long long)bad_state, (unsigned long long)discarded_unused,
      (unsigned long long)lost_volatile, (unsigned long long)intact_volatile,
      (unsigned long long)reused, (unsigned long long)spins);
  fflush(stdout);
  return (lost_writes || bad_zero || bad_state) ? 1 : 0;
}
