// smp.background= (mm/background_churn.h): idle work for every AP, guest only.
#include <cstring>
#include <new>

#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/panic.h"
#include "kernel/percpu.h"
#include "kernel/smp.h"
#include "kernel/threads.h"
#include "mm/background_churn.h"
#include "mm/mm.h"

namespace blimp::mm {
namespace {

// Constructed in place on first use by its own CPU: a global with a constructor would need
// the allocator's reference at static-initialisation time.
alignas(BackgroundChurn) constinit unsigned char g_churn_storage[percpu::kMaxCpus]
                                                                [sizeof(BackgroundChurn)] = {};
constinit BackgroundChurn* g_churn[percpu::kMaxCpus] = {};

// A line each time a CPU's checked blocks reach 2^10, 2^12, 2^14, ...: proof in the log that the
// churn ran, without a line per second.
constexpr uint64_t kFirstReport = 1024;

void churn_step(size_t cpu) {
  BackgroundChurn*& c = g_churn[cpu];
  if (!c) c = new (g_churn_storage[cpu]) BackgroundChurn(pages(), cpu);
  ChurnMismatch bad;
  const uint64_t before = c->counters().checked;
  if (!c->step(bad)) {
    panic(
        "smp.background=churn: cpu %zu: block %#lx (order %u) changed while held: word %lu is "
        "%#lx, was written %#lx",
        cpu, bad.block, bad.order, bad.word, bad.found, bad.expected);
  }
  const uint64_t after = c->counters().checked;
  if (after != before && after >= kFirstReport && (after & (after - 1)) == 0 &&
      __builtin_ctzll(after) % 2 == 0) {
    kprintf("smp.background=churn: cpu %zu: %lu blocks checked, %lu allocations found no memory\n",
            cpu, after, c->counters().failed);
  }
}

void spin_step(size_t) {
  // Computes without touching memory, like memhog's spin: the CPU is busy, nothing else changes.
  volatile uint64_t x = 0;
  for (int i = 0; i < 4096; i++) x = x + i;
}

}  // namespace

void start_background_load() {
  char mode[16];
  if (!cmdline::get("smp.background", mode, sizeof mode) || strcmp(mode, "off") == 0) return;
  threads::IdleStep step = nullptr;
  if (strcmp(mode, "churn") == 0) {
    step = churn_step;
  } else if (strcmp(mode, "spin") == 0) {
    step = spin_step;
  } else {
    kprintf("smp: bad value smp.background=%s (off, spin, churn): APs stay idle\n", mode);
    return;
  }
  const size_t online = smp::online_count() - 1;  // the APs: the BSP runs the app
  threads::set_idle_step(step);
  kprintf("smp: background %s on %zu AP%s\n", mode, online, online == 1 ? "" : "s");
}

}  // namespace blimp::mm
