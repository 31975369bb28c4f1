/* libFuzzer target: the host-side safety nets of patch 0007 on an arbitrary page-state array.
 *
 *  1. The STABLE guard (blimp_pstate_guard_claim): of a range handed over for discard, only
 *     UNUSED bytes are claimed (to DISCARDING_UNUSED), DISCARDED_UNUSED ones count as already
 *     done, every other byte and the array's own pages are refused and left alone, indices past
 *     the array are only counted; every index is counted once; the runs are exactly the claimed
 *     bytes, inside the range; finish publishes DISCARDED_UNUSED (or restores UNUSED) and nothing
 *     else.
 *  2. Sweeps in batches (blimp_pstate_claim_from): claiming the whole array in batches of at
 *     most B pages claims exactly the pages one unbounded claim does, every batch claims at most
 *     B pages, runs stay inside their batch, and *pos only moves forward.
 *  3. Limited sweeps, unused pages first (blimp_pstate_claim_kinds_from): see below. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "blimp-balloon-decode.h"

typedef struct {
  uint8_t* seen;
  uint64_t lo, hi; /* runs must lie in [lo, hi) */
  uint64_t pages, runs;
  BlimpRun* list;
} Ctx;

static bool emit(void* opaque, uint64_t first, uint64_t count) {
  Ctx* c = opaque;
  assert(count >= 1 && first >= c->lo && first + count <= c->hi);
  for (uint64_t i = first; i < first + count; i++) {
    assert(!c->seen[i]);
    c->seen[i] = 1;
  }
  c->list[c->runs].pfn = first;
  c->list[c->runs].npages = count;
  c->runs++;
  c->pages += count;
  return true;
}

static uint8_t state_of(uint8_t v) {
  /* mostly defined states, some garbage and DISCARDING values the guest must not write */
  static const uint8_t defined[8] = {0x00, 0x01, 0x02, 0x03, 0x41, 0x43, 0x81, 0x83};
  return (v & 0xf0) == 0xf0 ? v : defined[v & 7];
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) {
    return 0;
  }
  uint64_t n = size - 8;
  uint64_t alloc = n ? n : 1;
  uint8_t *st = malloc(alloc), *orig = malloc(alloc);
  Ctx c = {.seen = calloc(alloc, 1), .list = malloc(alloc * sizeof(BlimpRun))};
  uint64_t skip_lo = data[0] % (n + 1), skip_hi = skip_lo + data[1] % 8;
  uint64_t first = data[2] % (n + 4), count = data[3] + (uint64_t)(data[4] & 3) * 256;
  bool discarded = data[5] & 1;
  uint64_t batch = (data[6] % 32) + 1;
  bool claim_unused = data[7] & 1;

  if (data[5] & 2) {
    count = UINT64_MAX - first; /* lengths up to the end of the address space too */
  }
  for (uint64_t i = 0; i < n; i++) {
    st[i] = orig[i] = state_of(data[8 + i]);
  }

  /* 1. guard */
  uint64_t already = 0, refused = 0, outside = 0;
  c.lo = first;
  c.hi = first + count < n ? first + count : n;
  uint64_t claimed = blimp_pstate_guard_claim(st, n, skip_lo, skip_hi, first, count, emit, &c,
                                              &already, &refused, &outside);
  assert(claimed == c.pages);
  assert(claimed + already + refused + outside == count);
  for (uint64_t i = 0; i < n; i++) {
    bool in_range = i >= first && i - first < count;
    bool own = i >= skip_lo && i < skip_hi;
    if (c.seen[i]) {
      assert(in_range && !own);
      assert(orig[i] == BLIMP_PS_UNUSED && st[i] == BLIMP_PS_DISCARDING_UNUSED);
    } else {
      assert(st[i] == orig[i]);
      /* an UNUSED page of the range, not the array's, is always claimed */
      assert(!(in_range && !own && orig[i] == BLIMP_PS_UNUSED));
    }
  }
  uint64_t nu = 0, nv = 0, changed = 0;
  for (uint64_t r = 0; r < c.runs; r++) {
    changed += blimp_pstate_finish(st, c.list[r].pfn, c.list[r].npages, discarded, &nu, &nv);
  }
  assert(changed == claimed && nu == claimed && nv == 0);
  for (uint64_t i = 0; i < n; i++) {
    if (c.seen[i]) {
      assert(st[i] == (discarded ? BLIMP_PS_DISCARDED_UNUSED : BLIMP_PS_UNUSED));
    } else {
      assert(st[i] == orig[i]);
    }
  }

  /* 2. batched sweep == one unbounded sweep */
  uint8_t* one = malloc(alloc);
  for (uint64_t i = 0; i < n; i++) {
    st[i] = orig[i];
    one[i] = orig[i];
  }
  Ctx all = {.seen = calloc(alloc, 1), .list = malloc(alloc * sizeof(BlimpRun)), .hi = n};
  uint64_t inv1 = 0, inv2 = 0;
  uint64_t total1 =
      blimp_pstate_claim(one, n, skip_lo, skip_hi, UINT64_MAX, claim_unused, emit, &all, &inv1);
  memset(c.seen, 0, alloc);
  uint64_t pos = 0, total2 = 0, batches = 0;
  for (;;) {
    uint64_t before = pos;
    c.lo = pos;
    c.hi = n;
    c.pages = c.runs = 0;
    uint64_t got = blimp_pstate_claim_from(st, n, &pos, skip_lo, skip_hi, batch, claim_unused, emit,
                                           &c, &inv2);
    assert(got <= batch && got == c.pages);
    assert(pos >= before && pos <= n);
    for (uint64_t r = 0; r < c.runs; r++) {
      assert(c.list[r].pfn + c.list[r].npages <= pos);
    }
    total2 += got;
    batches++;
    assert(batches <= n + 1);
    if (got < batch || pos >= n) {
      break;
    }
  }
  assert(total1 == total2);
  assert(inv1 == inv2);
  assert(memcmp(st, one, n) == 0);

  /* 3. a limited sweep, unused pages first (patch 0011): a pass per kind claims
   *    min(limit, unused + volatile) pages, volatile ones only once every unused page is taken;
   *    without a limit it claims what one unbounded claim does. */
  uint64_t limit = (data[6] & 0x80) ? UINT64_MAX : data[4] % (n + 2);
  uint64_t unused = 0, vol = 0;
  for (uint64_t i = 0; i < n; i++) {
    st[i] = orig[i];
    if (i >= skip_lo && i < skip_hi) {
      continue;
    }
    unused += claim_unused && orig[i] == BLIMP_PS_UNUSED;
    vol += orig[i] == BLIMP_PS_VOLATILE;
  }
  memset(c.seen, 0, alloc);
  c.lo = 0;
  c.hi = n;
  c.pages = c.runs = 0;
  uint64_t inv3 = 0, got_u = 0, got_v = 0;
  if (claim_unused) {
    pos = 0;
    got_u = blimp_pstate_claim_kinds_from(st, n, &pos, skip_lo, skip_hi, limit, BLIMP_CLAIM_UNUSED,
                                          emit, &c, &inv3);
  }
  if (got_u < limit) {
    pos = 0;
    got_v = blimp_pstate_claim_kinds_from(st, n, &pos, skip_lo, skip_hi, limit - got_u,
                                          BLIMP_CLAIM_VOLATILE, emit, &c, NULL);
  }
  uint64_t want = unused + vol < limit ? unused + vol : limit;
  assert(got_u + got_v == want && c.pages == want);
  assert(got_u == (unused < limit ? unused : limit));
  assert(got_v == 0 || got_u == unused);
  for (uint64_t i = 0; i < n; i++) {
    if (c.seen[i]) {
      assert(st[i] == (orig[i] == BLIMP_PS_UNUSED ? BLIMP_PS_DISCARDING_UNUSED
                                                  : BLIMP_PS_DISCARDING_VOLATILE));
    } else {
      assert(st[i] == orig[i]);
    }
  }
  if (limit == UINT64_MAX) {
    assert(got_u + got_v == total1 && memcmp(st, one, n) == 0);
  }
  free(one);
  free(all.seen);
  free(all.list);
  free(st);
  free(orig);
  free(c.seen);
  free(c.list);
  return 0;
}
