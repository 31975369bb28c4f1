// app=mmbench: the page allocator's benchmark and self-test in the guest, so the guest figures in
// docs/mm.md (and the README) can be reproduced from the tree:
//   image/run.sh --app mmbench --memory 1G
// repeat=N (default 3) runs mm::run_alloc_benchmark(mm::pages(), timer::now_ns, rounds, batch)
// N times (rounds=20, batch=4096 by default) and prints each run ("mm bench 4 KiB: ...", "mm bench
// 2 MiB: ..."); then selftest=SIZE (default: all free memory; 0 skips it) runs mm::self_test over
// that much free RAM ("mm self-test: ... ok"). Exit status 0 when every benchmark run had its
// scratch array and the self-test passed, 1 otherwise, 2 on a bad argument. The self-test
// touches every page it tests, so the host backs them all: for test VMs.
//
// threads=N (issue 17) measures the allocator on N CPUs at once instead (threads=1 too, so that
// the one-CPU point of a scaling curve is the same loop): N workers (apps/workers.h: the BSP and
// threads on the first N-1 other online CPUs; more than are online is an error, status 2) each
// run mm::run_alloc_worker for duration=T (default 2s) from a common start, in rounds of batch=B
// (default 64) blocks of order=K (default 0: 4 KiB; 9 is 2 MiB), every block tagged when
// allocated and checked before it is freed. Per run (repeat=N of them), one line per worker and
// a total:
//   mm bench threads=2 4 KiB: cpu 1: 612345 ops in 2000.1 ms, 306172 ops/s, 3266.3 ns/op, 0 bad
//   tags, 0 failed
//   mm bench threads=2 4 KiB: total 1224690 ops in 2000.3 ms, 612255 ops/s, 1633.3 ns/op, 0 bad
//   tags, 0 failed
// (one line each; an op is one block allocated and freed; the total's time runs from the first
// worker's start to the last one's end, its ns/op is that time over all ops). Then the
// allocator's invariants are checked ("mmbench: allocator invariants hold") and the self-test
// runs as above. A bad tag or a failed allocation fails the run (exit 1).
#include <cinttypes>
#include <cstdio>

#include "apps/app.h"
#include "apps/app_args.h"
#include "apps/workers.h"
#include "kernel/percpu.h"
#include "kernel/timer.h"
#include "lib/atomic.h"
#include "lib/format.h"
#include "mm/bench.h"
#include "mm/mm.h"
#include "mm/self_test.h"

namespace {

using namespace blimp;

// Written by its own CPU during a run, read by the BSP after the join.
struct Worker {
  size_t index = 0;
  PhysAddr* scratch = nullptr;
  mm::AllocWorkerFigures figures = {};
};

Worker g_workers[percpu::kMaxCpus];
apps::WorkerCpus g_cpus;
unsigned g_order = 0;
size_t g_batch = 64;
uint64_t g_duration_ns = 0;
// The common start: workers are woken one IPI after another (and under TCG a vCPU may wait for a
// host core), so each announces itself and the BSP sets the end time only once all have, so
// that every worker's window is the same one.
Atomic<uint64_t> g_arrived{0};
Atomic<uint64_t> g_end_ns{0};

void run_worker(void* arg) {
  Worker& w = *static_cast<Worker*>(arg);
  g_arrived.fetch_add(1);
  uint64_t end = 0;
  if (w.index == 0) {
    while (g_arrived.load() < g_cpus.count) cpu_relax();
    end = timer::now_ns() + g_duration_ns;
    g_end_ns.store(end);
  } else {
    while ((end = g_end_ns.load()) == 0) cpu_relax();
  }
  w.figures =
      mm::run_alloc_worker(mm::pages(), timer::now_ns, g_order, g_batch, w.scratch, w.index, end);
}

// A thread that could not be started: the ones already waiting for the start see an end time in
// the past and return at once.
void abandon_run() { g_end_ns.store(1); }

void print_figures(const char* label, const char* who, uint64_t ops, uint64_t ns, uint64_t bad,
                   uint64_t failed) {
  uint64_t per_op = ops ? ns * 10 / ops : 0;  // tenths of a nanosecond: no floating point
  uint64_t per_s = ns ? ops * 1000000000ull / ns : 0;
  printf("mm bench threads=%zu %s: %s%" PRIu64 " ops in %" PRIu64 ".%" PRIu64 " ms, %" PRIu64
         " ops/s, %" PRIu64 ".%" PRIu64 " ns/op, %" PRIu64 " bad tags, %" PRIu64 " failed\n",
         g_cpus.count, label, who, ops, ns / 1000000, ns / 100000 % 10, per_s, per_op / 10,
         per_op % 10, bad, failed);
}

// One run on every worker; false when a tag was bad or an allocation failed.
bool run_threads_once(const char* label) {
  g_arrived.store(0);
  g_end_ns.store(0);
  if (!apps::run_on_workers("mmbench", g_cpus, run_worker, g_workers, abandon_run)) return false;
  uint64_t ops = 0, bad = 0, failed = 0, start = UINT64_MAX, end = 0;
  for (size_t i = 0; i < g_cpus.count; ++i) {
    const mm::AllocWorkerFigures& f = g_workers[i].figures;
    char who[32];
    format(who, sizeof who, "cpu %zu: ", g_cpus.cpu[i]);
    print_figures(label, who, f.ops, f.end_ns - f.start_ns, f.bad_tags, f.failed);
    if (f.bad_tags)
      printf("mmbench: cpu %zu: %" PRIu64 " blocks lost their tag, the first at 0x%" PRIx64 "\n",
             g_cpus.cpu[i], f.bad_tags, f.first_bad);
    ops += f.ops;
    bad += f.bad_tags;
    failed += f.failed;
    if (f.start_ns < start) start = f.start_ns;
    if (f.end_ns > end) end = f.end_ns;
  }
  print_figures(label, "total ", ops, end > start ? end - start : 0, bad, failed);
  return bad == 0 && failed == 0 && ops > 0;
}

// threads=N: scratch arrays for every worker, `repeat` runs, the invariants. False on a failure.
bool run_threads(uint64_t repeat) {
  const size_t n = g_cpus.count;
  // At most a quarter of free memory in flight over all workers, as the one-CPU benchmark keeps.
  uint64_t limit = mm::pages().free_pages_count() / mm::pages_of_order(g_order) / 4 / n;
  if (g_batch > limit) g_batch = limit ? size_t(limit) : 1;
  const uint64_t scratch_pages = (g_batch * sizeof(PhysAddr) + kPageSize - 1) / kPageSize;
  bool ok = true;
  size_t have = 0;
  for (; have < n; ++have) {
    auto s = mm::pages().alloc_run(scratch_pages, mm::Owner::Kernel, mm::kAllocNoReclaim);
    if (s.is_error()) {
      printf("mmbench: no memory for the scratch arrays\n");
      ok = false;
      break;
    }
    g_workers[have].index = have;
    g_workers[have].scratch = phys_to_virt<PhysAddr>(s.value());
  }
  char label[16];
  uint64_t bytes = mm::pages_of_order(g_order) * kPageSize;
  if (bytes >= (1u << 20))
    format(label, sizeof label, "%" PRIu64 " MiB", bytes >> 20);
  else
    format(label, sizeof label, "%" PRIu64 " KiB", bytes >> 10);
  if (ok) {
    apps::print_worker_cpus("mmbench", g_cpus);
    printf("mmbench: %" PRIu64 " runs of %" PRIu64
           " ms on %zu threads, rounds of %zu blocks of %s\n",
           repeat, g_duration_ns / 1000000, n, g_batch, label);
    for (uint64_t i = 0; i < repeat; ++i) ok = run_threads_once(label) && ok;
  }
  for (size_t i = 0; i < have; ++i)
    mm::pages().free_run(virt_to_phys(g_workers[i].scratch), scratch_pages);
  bool invariants = mm::pages().check_invariants();
  printf("mmbench: allocator invariants %s\n", invariants ? "hold" : "VIOLATED");
  return ok && invariants;
}

int mmbench_main(int argc, char** argv) {
  uint64_t repeat = 3, rounds = 20, batch = 4096, selftest = UINT64_MAX;
  uint64_t threads = 0, order = 0, duration_ns = 2000000000ull;
  const bool smp = app_args::find(argc, argv, "threads") != nullptr;
  if (smp) batch = 64;
  if (!app_args::get_u64("mmbench", argc, argv, "repeat", repeat) ||
      !app_args::get_u64("mmbench", argc, argv, "rounds", rounds) ||
      !app_args::get_u64("mmbench", argc, argv, "batch", batch) ||
      !app_args::get_size("mmbench", argc, argv, "selftest", selftest) ||
      !app_args::get_u64("mmbench", argc, argv, "threads", threads) ||
      !app_args::get_u64("mmbench", argc, argv, "order", order) ||
      !app_args::get_duration("mmbench", argc, argv, "duration", duration_ns))
    return 2;
  if (smp) {
    if (order > mm::kMaxOrder || batch == 0 || batch > 4096 || duration_ns == 0) {
      printf("mmbench: threads= needs order=0..%u, batch=1..4096 and a duration above 0\n",
             mm::kMaxOrder);
      return 2;
    }
    if (!apps::choose_worker_cpus("mmbench", threads, g_cpus)) return 2;
    g_order = unsigned(order);
    g_batch = size_t(batch);
    g_duration_ns = duration_ns;
    bool ok = run_threads(repeat);
    if (selftest) ok = mm::self_test(mm::pages(), selftest).ok && ok;
    printf("mmbench: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
  }
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
          "page allocator benchmark and self-test (repeat=N rounds=N batch=N selftest=SIZE; "
          "threads=N [order=K] [duration=T]: N CPUs at once)",
          mmbench_main);
