/* libFuzzer target: inflate PFN sort + merge (blimp_pfns_to_runs), used by patch 0001.
 * Checks: runs are sorted, disjoint and not adjacent; they cover exactly the set of input PFNs. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "blimp-balloon-decode.h"

static int cmp64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  size_t n = size / 4; /* the wire carries 32-bit PFNs; also try 64-bit tops */
  if (n > 8192) {
    n = 8192;
  }
  uint64_t* pfns = malloc((n ? n : 1) * sizeof(uint64_t));
  uint64_t* ref = malloc((n ? n : 1) * sizeof(uint64_t));
  BlimpRun* runs = malloc((n ? n : 1) * sizeof(BlimpRun));
  for (size_t i = 0; i < n; i++) {
    uint32_t v;
    memcpy(&v, data + 4 * i, 4);
    pfns[i] = (size & 1) ? (UINT64_MAX - v) : v; /* odd sizes probe the top of u64 */
    ref[i] = pfns[i];
  }
  size_t nr = blimp_pfns_to_runs(pfns, n, runs);
  qsort(ref, n, sizeof(uint64_t), cmp64);
  size_t uniq = 0;
  for (size_t i = 0; i < n; i++) {
    if (i == 0 || ref[i] != ref[i - 1]) {
      ref[uniq++] = ref[i];
    }
  }
  uint64_t total = 0;
  size_t k = 0;
  for (size_t r = 0; r < nr; r++) {
    assert(runs[r].npages >= 1);
    assert(runs[r].pfn + runs[r].npages - 1 >= runs[r].pfn); /* no wrap */
    if (r) {
      assert(runs[r].pfn > runs[r - 1].pfn + runs[r - 1].npages); /* gap between runs */
    }
    for (uint64_t p = 0; p < runs[r].npages; p++) {
      assert(k < uniq && ref[k] == runs[r].pfn + p);
      k++;
    }
    total += runs[r].npages;
  }
  assert(k == uniq && total == uniq);
  assert(n == 0 || nr >= 1);
  free(pfns);
  free(ref);
  free(runs);
  return 0;
}
