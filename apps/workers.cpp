#include "apps/workers.h"

#include <cinttypes>
#include <cstdio>

#include "kernel/smp.h"
#include "lib/format.h"

namespace blimp::apps {

bool choose_worker_cpus(const char* app, uint64_t threads, WorkerCpus& out) {
  const size_t online = smp::online_count();
  if (threads == 0 || threads > online) {
    printf("%s: threads=%" PRIu64 " but %zu CPU%s online (threads=1..%zu)\n", app, threads, online,
           online == 1 ? " is" : "s are", online);
    return false;
  }
  out.count = size_t(threads);
  out.cpu[0] = 0;
  size_t next = 1;
  for (size_t i = 1; i < out.count; i++) {
    while (!smp::is_online(next)) next++;
    out.cpu[i] = next++;
  }
  return true;
}

void print_worker_cpus(const char* app, const WorkerCpus& cpus) {
  char list[256];
  size_t used = 0;
  for (size_t i = 0; i < cpus.count && used < sizeof list; i++)
    used += format(list + used, sizeof list - used, "%s%zu", i ? "," : "", cpus.cpu[i]);
  printf("%s: %zu threads, on cpus %s\n", app, cpus.count, list);
}

bool run_on_workers(const char* app, const WorkerCpus& cpus, threads::Fn fn, void* args,
                    size_t stride, void (*abandon)()) {
  auto arg = [&](size_t i) { return static_cast<char*>(args) + i * stride; };
  size_t started = 1;
  bool ok = true;
  for (; started < cpus.count; started++) {
    auto r = threads::start(cpus.cpu[started], fn, arg(started));
    if (r.is_error()) {
      printf("%s: cannot start a thread on cpu %zu: %s\n", app, cpus.cpu[started],
             error_name(r.error()));
      ok = false;
      break;
    }
  }
  if (ok)
    fn(arg(0));
  else if (abandon)
    abandon();
  for (size_t i = 1; i < started; i++) (void)threads::join(cpus.cpu[i]);
  return ok;
}

}  // namespace blimp::apps
