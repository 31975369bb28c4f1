#include "kernel/interrupts.h"

#include "kernel/arch/apic.h"
#include "kernel/arch/cpu.h"
#include "kernel/arch/descriptor_tables.h"
#include "kernel/console.h"
#include "kernel/deferred_work.h"
#include "kernel/fault.h"
#include "lib/irq.h"
#include "lib/per_boot.h"

namespace blimp::interrupts {
namespace {

struct Slot {
  Handler handler;
  void* context;
};
Slot g_slots[256];
// Timer interrupts alone make these differ in every VM (lib/per_boot.h).
BLIMP_PER_BOOT uint64_t g_counts[256];

}  // namespace

ErrorOr<uint8_t> allocate_vector(Handler handler, void* context) {
  IrqGuard guard;
  for (unsigned v = arch::apic::kFirstDynamicVector; v <= arch::apic::kLastDynamicVector; v++) {
    if (!g_slots[v].handler) {
      g_slots[v] = {handler, context};
      return static_cast<uint8_t>(v);
    }
  }
  return Error::Busy;
}

ErrorOr<void> route_gsi(unsigned gsi, uint8_t vector, bool level_triggered, bool active_low) {
  if (!arch::apic::ioapic_route(gsi, vector, level_triggered, active_low)) {
    kprintf("interrupts: GSI %u is not on the I/O APIC\n", gsi);
    return Error::InvalidArgument;
  }
  return {};
}

MsiMessage msi_message(uint8_t vector) {
  // Intel SDM vol. 3, 11.11: fixed delivery, edge, physical destination = this CPU.
  return {0xfee00000ull | (uint64_t(arch::apic::local_id()) << 12), vector};
}

void set_fixed_handler(uint8_t vector, Handler handler, void* context) {
  g_slots[vector] = {handler, context};
}

uint64_t count(uint8_t vector) { return g_counts[vector]; }

}  // namespace blimp::interrupts

extern "C" void interrupt_dispatch(blimp::arch::InterruptFrame* frame) {
  using namespace blimp;
  uint64_t v = frame->vector;
  if (v < 32) {
    fault::report_exception(*frame);  // does not return
  }
  if (v == arch::apic::kSpuriousVector) return;  // no EOI for spurious interrupts
  if (v >= arch::apic::kLegacyPicBase && v < arch::apic::kLegacyPicBase + 16) return;
  // The wake-up IPI has no handler: being interrupted is the point (kernel/threads.h), and on
  // the BSP the work another CPU queued runs below. It is not counted: the counts are the BSP's
  // (APs take nothing else), and several APs would race on one counter.
  if (v != arch::apic::kWakeVector) {
    interrupts::g_counts[v]++;
    auto& slot = interrupts::g_slots[v];
    if (slot.handler) {
      slot.handler(slot.context);
    } else {
      kprintf("interrupts: unexpected vector %lu\n", v);
    }
  }
  arch::apic::eoi();
  // The bottom half: queued work runs here with interrupts enabled (see deferred_work.h), on the
  // BSP only. The interrupted context's registers are safe in this frame until we return.
  work::run_pending();
}
