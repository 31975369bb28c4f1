#include "kernel/deferred_work.h"

#include "kernel/arch/apic.h"
#include "kernel/percpu.h"
#include "lib/irq.h"
#include "lib/spinlock.h"

namespace blimp::work {
namespace {

// Lock order: g_queue_lock is a leaf (nothing is taken under it; work runs outside it).
constinit SpinLock g_queue_lock{LockRank::kDeferredWork};
WorkItem* g_head = nullptr;  // the queue and every item's next/queued: under g_queue_lock
WorkItem* g_tail = nullptr;
bool g_running = false;  // the BSP's alone

}  // namespace

void schedule(WorkItem& item) {
  {
    SpinLockGuard guard(g_queue_lock);
    if (item.queued) return;
    item.queued = true;
    item.next = nullptr;
    if (g_tail)
      g_tail->next = &item;
    else
      g_head = &item;
    g_tail = &item;
  }
  // On the BSP the work runs at the next interrupt's end (or the caller's run_pending()); an AP
  // makes that interrupt happen.
  if (percpu::cpu_index() != 0)
    (void)arch::apic::send_fixed(percpu::block(0).apic_id, arch::apic::kWakeVector);
}

void run_pending() {
  if (percpu::cpu_index() != 0) return;
  uint64_t flags = irq_save();
  if (g_running) {
    irq_restore(flags);
    return;
  }
  g_running = true;
  for (;;) {
    WorkItem* item;
    {
      SpinLockGuard guard(g_queue_lock);
      item = g_head;
      if (!item) break;
      g_head = item->next;
      if (!g_head) g_tail = nullptr;
      item->queued = false;
    }
    asm volatile("sti" ::: "memory");
    item->fn(item->context);
    asm volatile("cli" ::: "memory");
  }
  g_running = false;
  irq_restore(flags);
}

bool running() { return g_running; }

}  // namespace blimp::work
