/* libFuzzer target: the host half of the page-state protocol (blimp_pstate_claim / finish)
 * on an arbitrary array. Checks the spec's safety rules: only UNUSED (when allowed) and
 * VOLATILE bytes are claimed, never inside the skip range, the emitted runs are exactly the
 * claimed bytes, max_claim holds, and finish publishes DISCARDED_x or restores x, touching
 * nothing else. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "blimp-balloon-decode.h"

typedef struct {
  uint8_t* seen;  /* 1 where a run covered the index */
  BlimpRun* list; /* the runs, as QEMU collects them */
  uint64_t n, runs, pages;
  uint64_t stop_after;
} Ctx;

static bool emit(void* opaque, uint64_t first, uint64_t count) {
  Ctx* c = opaque;
  assert(count >= 1 && first + count <= c->n);
  for (uint64_t i = first; i < first + count; i++) {
    assert(!c->seen[i]);
    c->seen[i] = 1;
  }
  c->list[c->runs].pfn = first;
  c->list[c->runs].npages = count;
  c->runs++;
  c->pages += count;
  return c->runs < c->stop_after;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) {
    return 0;
  }
  uint64_t n = size - 8;
  uint64_t skip_lo = data[0] % (n + 1), skip_hi = skip_lo + data[1] % 16;
  uint64_t max_claim = data[2] ? data[2] * 4u : UINT64_MAX;
  bool claim_unused = data[3] & 1, discarded = data[3] & 2;
  Ctx c = {.n = n, .stop_after = data[4] ? data[4] : UINT64_MAX};
  uint8_t *st = malloc(n ? n : 1), *orig = malloc(n ? n : 1);
  c.seen = calloc(n ? n : 1, 1);
  c.list = malloc((n ? n : 1) * sizeof(BlimpRun));
  for (uint64_t i = 0; i < n; i++) {
    uint8_t v = data[8 + i];
    /* mostly defined states; garbage and guest-written DISCARDING values too */
    st[i] = (v & 0xc0) ? v : (v & 3);
    orig[i] = st[i];
  }
  uint64_t invalid = 0;
  uint64_t claimed =
      blimp_pstate_claim(st, n, skip_lo, skip_hi, max_claim, claim_unused, emit, &c, &invalid);
  assert(claimed <= max_claim);
  assert(c.pages == claimed);
  uint64_t inv = 0;
  for (uint64_t i = 0; i < n; i++) {
    if (!blimp_pstate_valid(orig[i])) {
      inv++;
    }
    if (c.seen[i]) {
      assert(!(i >= skip_lo && i < skip_hi));
      assert((orig[i] == BLIMP_PS_UNUSED && claim_unused && st[i] == BLIMP_PS_DISCARDING_UNUSED) ||
             (orig[i] == BLIMP_PS_VOLATILE && st[i] == BLIMP_PS_DISCARDING_VOLATILE));
    } else {
      assert(st[i] == orig[i]);
    }
  }
  assert(invalid <= inv);
  uint64_t nu = 0, nv = 0, changed = 0;
  for (uint64_t r = 0; r < c.runs; r++) { /* QEMU finishes run by run */
    changed += blimp_pstate_finish(st, c.list[r].pfn, c.list[r].npages, discarded, &nu, &nv);
  }
  assert(changed == claimed && nu + nv == claimed);
  for (uint64_t i = 0; i < n; i++) {
    if (c.seen[i]) {
      uint8_t want = discarded ? (orig[i] | 0x80) : orig[i];
      assert(st[i] == want);
    } else {
      assert(st[i] == orig[i]); /* the host never writes bytes it did not claim */
    }
  }
  free(st);
  free(orig);
  free(c.seen);
  free(c.list);
  return 0;
}
