/* libFuzzer target: the incremental re-marking of patch 0006 (blimp_hints_to_runs and
 * blimp_runs_diff), on hint lists and run sets built from the input, near pfn 0 and near 2^64.
 * Checks: the wanted runs are sorted, more than gap apart, at most max_runs, built of eligible
 * hints only and covering each of them unless a limit or a bad hint was counted; with a gap
 * predicate (patch 0015: no zero-filled gap is bridged) no run spans a gap it refused, and runs
 * at most gap apart are apart because it refused; the diff
 * emits, in ascending order, maximal ranges exactly equal to old minus new (drops) and new
 * minus old (adds), so applying it to old gives new; unsorted or overlapping input is refused
 * with nothing emitted. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "blimp-balloon-decode.h"

#define DOM 4096u /* pages modelled by the bitmaps */
#define MAXH 512

typedef struct {
  uint64_t base; /* pfn of bitmap index 0 */
  uint8_t* cur;  /* old, turned into new by the callbacks */
  const uint8_t *o, *n;
  uint64_t last_end; /* ascending order */
  uint64_t calls, stop_after;
} Ctx;

static uint64_t rend(const BlimpRun* r) {
  return r->npages < UINT64_MAX - r->pfn ? r->pfn + r->npages : UINT64_MAX;
}

static void paint(uint8_t* bm, uint64_t base, const BlimpRun* r, size_t k) {
  for (size_t i = 0; i < k; i++) {
    for (uint64_t p = r[i].pfn; p < rend(&r[i]); p++) {
      assert(p - base < DOM);
      bm[p - base] = 1;
    }
  }
}

static bool in_diff(Ctx* c, int kind, uint64_t p) {
  if (p < c->base || p - c->base >= DOM) {
    return false;
  }
  p -= c->base;
  return kind == 1 ? (c->o[p] && !c->n[p]) : (c->n[p] && !c->o[p]);
}

static bool emit(Ctx* c, int kind, uint64_t first, uint64_t count) {
  assert(count >= 1 && first - c->base < DOM && count <= DOM - (first - c->base));
  assert(c->calls == 0 || first >= c->last_end);
  /* maximal: the pages just outside are not in the same difference */
  assert(first == 0 || !in_diff(c, kind, first - 1));
  assert(!in_diff(c, kind, first + count));
  for (uint64_t p = first; p < first + count; p++) {
    assert(in_diff(c, kind, p));
    c->cur[p - c->base] = kind == 2;
  }
  c->last_end = first + count;
  return ++c->calls < c->stop_after;
}

static bool drop(void* o, uint64_t f, uint64_t n) { return emit(o, 1, f, n); }
static bool add(void* o, uint64_t f, uint64_t n) { return emit(o, 2, f, n); }

static bool elig_a(void* o, const BlimpSeal* h) {
  (void)o;
  return h->hash & 1;
}
static bool elig_b(void* o, const BlimpSeal* h) {
  (void)o;
  return h->hash & 2;
}

static bool bridge_even(void* o, uint64_t from, uint64_t to) {
  (void)o;
  assert(from < to);
  return (from & 1) == 0; /* refuses the gaps that start on an odd page */
}

static void check_bridges(const BlimpSeal* h, size_t nh, BlimpHintPred el, uint64_t gap,
                          const BlimpRun* r, size_t k, uint64_t base) {
  uint8_t hint[DOM] = {0};
  for (size_t j = 0; j < nh; j++) {
    if (el(NULL, &h[j])) {
      for (uint64_t p = h[j].pfn; p < h[j].pfn + h[j].npages; p++) hint[p - base] = 1;
    }
  }
  for (size_t i = 0; i < k; i++) {
    if (i) {
      assert(r[i].pfn > rend(&r[i - 1]));
      assert(r[i].pfn - rend(&r[i - 1]) > gap || !bridge_even(NULL, rend(&r[i - 1]), r[i].pfn));
    }
    for (uint64_t p = r[i].pfn; p < rend(&r[i]); p++) { /* a hole starts after a hinted page */
      if (!hint[p - base] && hint[p - 1 - base]) {
        uint64_t e = p;
        while (!hint[e - base]) e++;
        assert(bridge_even(NULL, p, e));
      }
    }
  }
}

static void check_runs(const BlimpSeal* h, size_t nh, BlimpHintPred el, uint64_t gap,
                       size_t max_runs, const BlimpRun* r, size_t k, uint64_t skipped, uint64_t bad,
                       uint64_t base) {
  uint8_t hint[DOM] = {0}, cov[DOM] = {0};
  assert(k <= max_runs && k <= nh);
  for (size_t i = 0; i < k; i++) {
    bool s = false, e = false;
    assert(r[i].npages >= 1);
    if (i) {
      assert(r[i].pfn > rend(&r[i - 1]) && r[i].pfn - rend(&r[i - 1]) > gap);
    }
    for (size_t j = 0; j < nh; j++) { /* starts and ends on eligible hints */
      if (h[j].npages && el(NULL, &h[j])) {
        s |= h[j].pfn == r[i].pfn;
        e |= h[j].pfn + h[j].npages == rend(&r[i]);
      }
    }
    assert(s && e);
  }
  paint(cov, base, r, k);
  if (skipped || bad) {
    return;
  }
  for (size_t j = 0; j < nh; j++) {
    if (el(NULL, &h[j])) {
      for (uint64_t p = h[j].pfn; p < h[j].pfn + h[j].npages; p++) {
        assert(cov[p - base]);
        hint[p - base] = 1;
      }
    }
  }
  /* every unhinted page of a run lies in a hole of at most gap pages */
  for (size_t i = 0; i < k; i++) {
    uint64_t hole = 0;
    for (uint64_t p = r[i].pfn; p < rend(&r[i]); p++) {
      hole = hint[p - base] ? 0 : hole + 1;
      assert(hole <= gap);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) {
    return 0;
  }
  bool top = data[0] & 1; /* model the pages just below 2^64 */
  uint64_t base = top ? UINT64_MAX - DOM : 0;
  uint64_t gap = data[1] % 24;
  size_t max_runs = data[2] % 12 + (data[2] & 0x80 ? 1000 : 0);
  uint64_t stop_after = data[3] ? data[3] : UINT64_MAX;
  data += 4;
  size -= 4;

  BlimpSeal h[MAXH];
  size_t nh = 0;
  uint64_t pos = base;
  for (size_t i = 0; i + 3 < size && nh < MAXH; i += 4) {
    uint64_t np = data[i + 1] % 9;
    if (pos - base + data[i] % 32 + np > DOM) {
      break;
    }
    pos += data[i] % 32;
    h[nh].pfn = pos;
    h[nh].npages = np;
    h[nh].flags = 0;
    h[nh].hash = data[i + 2];
    nh++;
    pos += np;
  }

  BlimpRun a[MAXH], b[MAXH];
  uint64_t sk_a = 0, bad_a = 0, sk_b = 0, bad_b = 0;
  size_t ka = blimp_hints_to_runs(h, nh, gap, max_runs, elig_a, NULL, NULL, a, &sk_a, &bad_a);
  size_t kb = blimp_hints_to_runs(h, nh, gap, max_runs, elig_b, NULL, NULL, b, &sk_b, &bad_b);
  BlimpRun g[MAXH];
  uint64_t sk_g = 0, bad_g = 0;
  size_t kg =
      blimp_hints_to_runs(h, nh, gap, max_runs, elig_a, bridge_even, NULL, g, &sk_g, &bad_g);
  assert(bad_g == bad_a);
  check_bridges(h, nh, elig_a, gap, g, kg, base);
  check_runs(h, nh, elig_a, gap, max_runs, a, ka, sk_a, bad_a, base);
  check_runs(h, nh, elig_b, gap, max_runs, b, kb, sk_b, bad_b, base);
  if (max_runs >= nh) {
    assert(sk_a == 0 && sk_b == 0);
  }

  static uint8_t o[DOM], n[DOM], cur[DOM];
  memset(o, 0, DOM);
  memset(n, 0, DOM);
  paint(o, base, a, ka);
  paint(n, base, b, kb);
  memcpy(cur, o, DOM);
  Ctx c = {.base = base, .cur = cur, .o = o, .n = n, .stop_after = stop_after};
  assert(blimp_runs_diff(a, ka, b, kb, drop, add, &c));
  if (c.calls < stop_after) {
    assert(memcmp(cur, n, DOM) == 0);
  }
  /* the same set again: nothing to do */
  Ctx c2 = {.base = base, .cur = cur, .o = n, .n = n, .stop_after = UINT64_MAX};
  assert(blimp_runs_diff(b, kb, b, kb, drop, add, &c2) && c2.calls == 0);

  /* raw runs as given (may be unsorted, overlapping, empty, wrapping): either refused with
   * nothing emitted, or a valid diff against the wanted runs */
  BlimpRun raw[64];
  size_t nr = 0;
  for (size_t i = 0; i + 3 < size && nr < 64; i += 4) {
    raw[nr].pfn = base + (((uint64_t)data[i] << 4 | data[i + 3] >> 4) % (DOM - 40));
    raw[nr].npages = data[i + 1] % 40;
    if (top && (data[i + 3] & 1)) {
      raw[nr].npages = UINT64_MAX - data[i + 2]; /* wraps: cut at 2^64 */
    }
    nr++;
  }
  bool sorted = true;
  uint64_t end = 0;
  bool any = false;
  for (size_t i = 0; i < nr; i++) {
    if (rend(&raw[i]) == raw[i].pfn) {
      continue;
    }
    sorted &= !any || raw[i].pfn >= end;
    end = rend(&raw[i]);
    any = true;
  }
  memset(o, 0, DOM);
  for (size_t i = 0; sorted && i < nr; i++) {
    for (uint64_t p = raw[i].pfn; p < rend(&raw[i]); p++) {
      o[p - base] = 1;
    }
  }
  memcpy(cur, o, DOM);
  Ctx c3 = {.base = base, .cur = cur, .o = o, .n = n, .stop_after = UINT64_MAX};
  bool ok = blimp_runs_diff(raw, nr, b, kb, drop, add, &c3);
  assert(ok == sorted);
  if (ok) {
    assert(memcmp(cur, n, DOM) == 0);
  } else {
    assert(c3.calls == 0);
  }
  return 0;
}
