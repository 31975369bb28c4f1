// Deferred work: the bottom half of interrupt handling. A handler that has more to do than fits
// in an interrupt (inflating a balloon by a gigabyte, reporting free memory) queues a WorkItem;
// the work then runs on the way out of the interrupt, after the EOI, with interrupts enabled, on
// the interrupted context's stack. So it runs promptly even while the app computes, it can wait
// for device completions (their interrupts nest), and the app resumes when it is done.
//
// Rules for work functions: they run with interrupts enabled and must not assume the app is at
// any particular point. The app cannot be inside a SpinLock section (those mask interrupts), so
// work may take any SpinLock. Only one work function runs at a time; items queued meanwhile
// (from nested interrupts) run right after it. A WorkItem is queued at most once at a time.
//
// Thread context (the app, or the kernel before the app starts) may also call run_pending() to
// flush queued work, e.g. when the OOM path needs the balloon to finish first.
//
// CPUs: work runs on the BSP only (it drives the devices, whose interrupts all go there).
// schedule() may be called on any CPU: the queue is under a spinlock, and an AP that queues
// work sends the BSP a wake-up IPI (arch::apic::kWakeVector), on whose way out the work runs.
// run_pending() on an AP does nothing.
#pragma once

namespace blimp::work {

struct WorkItem {
  void (*fn)(void* context);
  void* context;
  // Internal: queue linkage.
  WorkItem* next = nullptr;
  bool queued = false;
};

// Queues `item` unless already queued. Safe from interrupt handlers and thread context, on any
// CPU.
void schedule(WorkItem& item);

// Runs queued work now, unless work is already running further up the stack.
// Called by the interrupt dispatcher after each EOI. BSP only (nothing on an AP).
void run_pending();

// Work is running on the BSP (further up its stack, or interrupted).
bool running();

}  // namespace blimp::work
