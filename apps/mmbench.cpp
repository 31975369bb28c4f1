// app=mmbench: the page allocator's benchmark and self-test in the guest, so the guest figures in
// docs/mm.md (and the README) can be reproduced from the tree:
//   image/run.sh --app mmbench --memory 1G
// repeat=N (default 3) runs mm::run_alloc_benchmark(mm::pages(), timer::now_ns, rounds, batch)
// N times (rounds=20, batch=4096 by default) and prints each run ("mm bench 4 KiB: ...", "mm bench
// 2 MiB: ..."); then selftest=SIZE (default: all free memory; 0 skips it) runs mm::self_test over
// that much free RAM ("mm self-test: ... ok"). Exit status 0 when every benchmark run had its
// scratch array and the self-test passed, 1 otherwise, 2 on a bad argument. The self-test
// touches every page it tests, so the host backs them all: for test VMs.
#include <cinttypes>
#include <cstdio>

#include "apps/app.h"
#include "apps/app_args.h"
#include "kernel/timer.h"
#include "mm/bench.h"
#include "mm/mm.h"
#include "mm/self_test.h"

namespace {

using namespace blimp;

int mmbench_main(int argc, char** argv) {
  uint64_t repeat = 3, rounds = 20, batch = 4096, selftest = UINT64_MAX;
  if (!app_args::get_u64("mmbench", argc, argv, "repeat", repeat) ||
      !app_args::get_u64("mmbench", argc, argv, "rounds", rounds) ||
      !app_args::get_u64("mmbench", argc, argv, "batch", batch) ||
      !app_args::get_size("mmbench", argc, argv, "selftest", selftest))
    return 2;
  if (rounds == 0 || rounds > 1000000 || batch == 0) {
    printf("mmbench: rounds must be 1..1000000 and batch at least 1\n");
    return 2;
  }
  printf("mmbench: %" PRIu64 " runs of %" PRIu64 " rounds, batches of %" PRIu64 " blocks\n", repeat,
         rounds, batch);
  bool ok = true;
  for (uint64_t i = 0; i < repeat; ++i) {
    mm::AllocBenchResult r =
        mm::run_alloc_benchmark(mm::pages(), timer::now_ns, unsigned(rounds), size_t(batch));
    mm::print_alloc_benchmark(r);
    ok = ok && r.ok;
  }
  if (selftest) ok = mm::self_test(mm::pages(), selftest).ok && ok;
  printf("mmbench: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

}  // namespace

BLIMP_APP(mmbench, "mmbench",
          "page allocator benchmark and self-test (repeat=N rounds=N batch=N selftest=SIZE)",
          mmbench_main);
