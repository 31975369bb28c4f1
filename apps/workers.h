// An app's threads=N (issue 17): N workers, one per CPU, running the same function at once. Worker
// 0 is the app's own, on the BSP; worker i > 0 is a thread (kernel/threads.h) on the i-th other
// online CPU, so what a worker runs must keep to what a thread on an AP may do (kprintf, not
// printf; an allocation there never reclaims).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernel/percpu.h"
#include "kernel/threads.h"

namespace blimp::apps {

struct WorkerCpus {
  size_t count = 0;
  size_t cpu[percpu::kMaxCpus] = {};  // cpu[0] is the BSP
};

// Picks the CPUs for threads=`threads`: 0 and the first threads-1 other online CPUs (an AP the BSP
// gave up on keeps its number but is skipped). 0 or more than are online prints "APP: threads=N
// but M CPUs are online (threads=1..M)" and returns false (the app exits with status 2).
bool choose_worker_cpus(const char* app, uint64_t threads, WorkerCpus& out);

// "APP: N threads, on cpus 0,1,..." (printf: from the BSP).
void print_worker_cpus(const char* app, const WorkerCpus& cpus);

// Runs fn on every worker at once, worker i getting (char*)args + i * stride, and returns when all
// of them have returned; worker 0 runs inline on the caller (the BSP). A thread that cannot be
// started is printed and the result is false: worker 0 does not run, `abandon` (if given) is
// called, then the threads already started are joined; for workers that only stop when worker 0
// tells them, abandon() tells them instead.
bool run_on_workers(const char* app, const WorkerCpus& cpus, threads::Fn fn, void* args,
                    size_t stride, void (*abandon)() = nullptr);

template <typename Worker>
bool run_on_workers(const char* app, const WorkerCpus& cpus, threads::Fn fn, Worker* workers,
                    void (*abandon)() = nullptr) {
  return run_on_workers(app, cpus, fn, workers, sizeof(Worker), abandon);
}

}  // namespace blimp::apps
