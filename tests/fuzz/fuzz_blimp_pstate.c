/* libFuzzer target: the host half of the page-state protocol (blimp_pstate_claim / finish)
 * on an arbitrary array. Checks the spec's safety rules: only UNUSED (when allowed) and
 * VOLATILE bytes are claimed, never inside the skip range, the emitted runs are exactly the
 * claimed bytes, max_claim holds, and finish publishes DISCARDED_x or restores x, touching
 * nothing else. Part 2: the aged claim (patch 0012) and the age histogram. */
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

  /* Part 2 (patch 0012): the aged claim takes only pages at least min_age old, all of them when
   * nothing stops it early, and the histogram accounts for every byte. Stamps come from the
   * input (some from the future: age 0). */
  uint32_t clock = (uint32_t)data[5] * 3u, min_age = data[6] % 64;
  uint32_t* stamps = malloc((n ? n : 1) * sizeof(uint32_t));
  for (uint64_t i = 0; i < n; i++) {
    st[i] = orig[i];
    stamps[i] = (uint32_t)data[8 + (i * 7) % n] * 2u;
    c.seen[i] = 0;
  }
  c.runs = c.pages = 0;
  c.stop_after = UINT64_MAX;
  BlimpAgeHistogram h;
  blimp_pstate_age_histogram(st, stamps, n, clock, skip_lo, skip_hi, &h);
  uint64_t total = h.stable + h.discarded + h.in_flight + h.invalid;
  for (unsigned b = 0; b < BLIMP_AGE_BUCKETS; b++) {
    total += h.unused[b] + h.volatile_pages[b];
  }
  assert(total == n);
  uint64_t pos = 0;
  unsigned kinds =
      (data[3] & 4 ? BLIMP_CLAIM_UNUSED : 0) | (data[3] & 8 ? BLIMP_CLAIM_VOLATILE : 0);
  claimed = blimp_pstate_claim_aged_from(st, n, &pos, skip_lo, skip_hi, UINT64_MAX, kinds, stamps,
                                         clock, min_age, emit, &c, NULL);
  assert(c.pages == claimed);
  for (uint64_t i = 0; i < n; i++) {
    bool in_skip = i >= skip_lo && i < skip_hi;
    bool kind_ok = (orig[i] == BLIMP_PS_UNUSED && (kinds & BLIMP_CLAIM_UNUSED)) ||
                   (orig[i] == BLIMP_PS_VOLATILE && (kinds & BLIMP_CLAIM_VOLATILE));
    uint32_t age = stamps[i] <= clock ? clock - stamps[i] : 0;
    bool should = !in_skip && kind_ok && age >= min_age;
    assert(!!c.seen[i] == should);
    assert(blimp_page_age(stamps, i, clock) == age);
    assert(blimp_age_bucket_min(blimp_age_bucket(age)) <= age);
  }
  free(stamps);
  free(st);
  free(orig);
  free(c.seen);
  free(c.list);
  return 0;
}
