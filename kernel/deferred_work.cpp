#include "kernel/deferred_work.h"

#include "lib/irq.h"

namespace blimp::work {
namespace {

WorkItem* g_head = nullptr;
WorkItem* g_tail = nullptr;
bool g_running = false;

}  // namespace

void schedule(WorkItem& item) {
  IrqGuard guard;
  if (item.queued) return;
  item.queued = true;
  item.next = nullptr;
  if (g_tail)
    g_tail->next = &item;
  else
    g_head = &item;
  g_tail = &item;
}

void run_pending() {
  uint64_t flags = irq_save();
  if (g_running || !g_head) {
    irq_restore(flags);
    return;
  }
  g_running = true;
  while (WorkItem* item = g_head) {
    g_head = item->next;
    if (!g_head) g_tail = nullptr;
    item->queued = false;
    asm volatile("sti" ::: "memory");
    item->fn(item->context);
    asm volatile("cli" ::: "memory");
  }
  g_running = false;
  irq_restore(flags);
}

bool running() { return g_running; }

}  // namespace blimp::work
