// Guest-only part of page states: allocating the array, hooking the allocator and registering
// with the device through the channel kernel_main hands in (PSTATE_REGISTER, spec section 5.2).
#include <cstring>

#include "kernel/cmdline.h"
#include "kernel/console.h"
#include "kernel/timer.h"
#include "lib/blimp_wire.h"
#include "lib/irq.h"
#include "mm/device_channel.h"
#include "mm/mm.h"
#include "mm/page_states/page_states.h"

namespace blimp::mm::page_states {

namespace {

bool g_init_done = false;
// The device channel init() was handed (the balloon), for registering again after a reset.
DeviceChannel* g_channel = nullptr;
// What PSTATE_REGISTER and PSTATE_AGES said, for registering again after a device reset.
wire::BlimpPstateRegister g_reg{};
wire::BlimpPstateAges g_ages{};  // ages_gpa 0: no age block

constexpr uint64_t kClockPeriodNs = 1'000'000'000ull;

uint32_t clock_seconds() { return uint32_t(timer::now_ns() / 1'000'000'000ull); }

// The age block's clock advances once a second, from the timer interrupt, for as long as the
// guest runs: one wakeup a second is the price of the host knowing how long memory sat idle.
void on_clock_tick(void*) {
  detail::guest_array().set_clock(clock_seconds());
  if (timer::call_at(timer::now_ns() + kClockPeriodNs, on_clock_tick, nullptr).is_error())
    kprintf("page-states: no timer slot: page ages stop advancing\n");
}

// PSTATE_AGES: tells the device where the age block is. A device that does not know the request
// (EUNSUPP: a QEMU before patch 0012) or refuses it leaves page states working without ages.
// Returns the status, or Error::Busy/... when the device gave no answer.
ErrorOr<uint32_t> send_ages(DeviceChannel* ch) {
  auto resp = ch->send(wire::kBlimpPstateAges, &g_ages, 1, sizeof g_ages);
  if (resp.is_error()) return resp.error();
  return resp.value().status;
}

// Device reset listener: the device forgot the array (spec section 5.2: reset unregisters), the
// guest did not: the array and the allocator hook kept running, so registering the same array
// again is all it takes. Bytes the host left DISCARDED_x are still true (those pages were
// discarded), and no DISCARDING_x byte can survive a reset (a sweep runs to completion under
// QEMU's lock, and the reset is handled under the same lock).
ResetListenerResult reregister(void*) {
  DeviceChannel* ch = g_channel;
  if (!ch || !ch->has_page_states()) return ResetListenerResult::Done;
  auto resp = ch->send(wire::kBlimpPstateRegister, &g_reg, 1, sizeof g_reg);
  if (resp.is_error() && resp.error() == Error::Busy) return ResetListenerResult::Retry;
  // EBUSY: the device holds an array although it forgot everything at the reset, so it is ours,
  // registered by an earlier attempt for this reset that then had to retry the age block (a
  // further reset would have made the device forget it again).
  const bool again = !resp.is_error() && resp.value().status == wire::kBlimpEbusy;
  if (!again && (resp.is_error() || resp.value().status != wire::kBlimpOk)) {
    // The array stays attached and hooked: without a registration the host never reads it, so
    // the only loss is that unused memory is not reclaimed until the next reset.
    kprintf(
        "page-states: PSTATE_REGISTER after the device reset failed: %s; the host will not "
        "discard through page states\n",
        resp.is_error() ? error_name(resp.error()) : wire::blimp_status_name(resp.value().status));
    return ResetListenerResult::Done;
  }
  if (!again)
    kprintf("page-states: re-registered %lu pages after the device reset\n", g_reg.npages);
  if (g_ages.ages_gpa) {
    auto st = send_ages(ch);
    if (st.is_error() && st.error() == Error::Busy) return ResetListenerResult::Retry;
    if (st.is_error() || st.value() != wire::kBlimpOk)
      kprintf(
          "page-states: PSTATE_AGES after the device reset failed: %s; the host sweeps in address "
          "order\n",
          st.is_error() ? error_name(st.error()) : wire::blimp_status_name(st.value()));
    else
      kprintf("page-states: re-sent the age block after the device reset\n");
  }
  return ResetListenerResult::Done;
}

// A guest CPU waited unusually long for the host to publish a DISCARDING byte (protocol.h).
void log_long_wait(const volatile uint8_t* byte, uint64_t spins) {
  const PageStateArray& a = detail::guest_array();
  kprintf(
      "page-states: waited %lu spins for the host to finish discarding page %#lx; still "
      "waiting (the host stalled mid-sweep?)\n",
      spins, (a.base_pfn() + uint64_t(byte - a.bytes())) << kPageShift);
}

// Allocates the age block, starts stamping and tells the device (spec section 4.5). Without an
// age block page states work as before: the host then claims in address order.
void setup_ages(DeviceChannel* ch, PageAllocator& pa, PageStateArray& a) {
  if (cmdline::has_flag("page_ages=off")) {
    kprintf("page-states: page ages off (page_ages=off)\n");
    return;
  }
  const uint64_t bytes = sizeof(wire::BlimpAgeHeader) + a.npages() * sizeof(uint32_t);
  const uint64_t pages = (bytes + kPageSize - 1) / kPageSize;
  auto r = pa.alloc_run(pages, Owner::Kernel, kAllocNoOomHook);
  if (r.is_error()) {
    kprintf("page-states: cannot allocate the %lu KiB age block: %s; no page ages\n",
            (pages * kPageSize) >> 10, error_name(r.error()));
    return;
  }
  auto* header = phys_to_virt<wire::BlimpAgeHeader>(r.value());
  std::memset(header, 0, sizeof *header);
  header->magic = wire::kBlimpAgeMagic;
  header->clock_s = clock_seconds();
  {
    IrqGuard g;
    a.attach_ages(header, reinterpret_cast<uint32_t*>(header + 1));
  }
  g_ages = wire::BlimpPstateAges{r.value(), a.npages(), 0};
  auto st = send_ages(ch);
  if (!st.is_error() && st.value() != wire::kBlimpOk) {
    // Refused (EUNSUPP from a device without patch 0012): the host never reads the block.
    kprintf("page-states: PSTATE_AGES refused: %s; no page ages\n",
            wire::blimp_status_name(st.value()));
    {
      IrqGuard g;
      a.attach_ages(nullptr, nullptr);
    }
    g_ages = {};
    pa.free_run(r.value(), pages);
    return;
  }
  if (st.is_error())
    kprintf("page-states: PSTATE_AGES got no answer (%s); sent again after the recovery\n",
            error_name(st.error()));
  if (timer::call_at(timer::now_ns() + kClockPeriodNs, on_clock_tick, nullptr).is_error())
    kprintf("page-states: no timer slot: page ages do not advance\n");
  kprintf("page-states: page ages on (%lu KiB at %#lx)\n", (pages * kPageSize) >> 10, r.value());
}

}  // namespace

void init(DeviceChannel* channel) {
  if (g_init_done) return;
  g_init_done = true;
  g_channel = channel;
  g_long_wait_hook = log_long_wait;
  if (cmdline::has_flag("page_states=off")) {
    kprintf("page-states: off (page_states=off)\n");
    return;
  }
  DeviceChannel* b = channel;
  if (!b || !b->has_page_states()) {
    kprintf("page-states: off (no balloon device offering page states)\n");
    return;
  }
  PageAllocator& pa = mm::pages();
  // The array covers page frames [0, end_pfn()): every page the allocator manages.
  const uint64_t npages = pa.end_pfn();
  const uint64_t array_pages = (npages + kPageSize - 1) / kPageSize;
  if (npages == 0) return;
  auto r = pa.alloc_run(array_pages, Owner::Kernel, kAllocNoOomHook);
  if (r.is_error()) {
    kprintf("page-states: cannot allocate the %lu KiB array: %s\n", (array_pages * kPageSize) >> 10,
            error_name(r.error()));
    return;
  }
  auto* bytes = phys_to_virt<uint8_t>(r.value());
  std::memset(bytes, 0, array_pages * kPageSize);  // STABLE, also the tail past npages
  PageStateArray& a = detail::guest_array();
  {
    // At boot, before the app: no AP runs a thread yet (kernel/threads.h), and with interrupts
    // masked no allocation can slip between the sync and the hook.
    IrqGuard g;
    a.attach(bytes, 0, npages);
    a.sync_and_hook(pa);
  }
  wire::BlimpPstateRegister reg{virt_to_phys(bytes), npages, 0};
  g_reg = reg;
  auto resp = b->send(wire::kBlimpPstateRegister, &reg, 1, sizeof reg);
  if (!resp.is_error() && resp.value().status != wire::kBlimpOk) {
    // The device answered and refused: it holds no pointer to the array, which may go.
    kprintf("page-states: PSTATE_REGISTER refused: %s\n",
            wire::blimp_status_name(resp.value().status));
    {
      IrqGuard g;
      a.unhook(pa);
      a.attach(nullptr, 0, 0);
    }
    pa.free_run(r.value(), array_pages);
    return;
  }
  if (resp.is_error()) {
    // No answer: the device was reset (it forgot the request), or could not even be reset (it
    // may still register the array and sweep through it). Either way the array stays: attached,
    // hooked and never freed, so no host write can land in reused memory; the reset listener
    // registers it once the device works again.
    kprintf(
        "page-states: PSTATE_REGISTER got no answer (%s); the array stays, to be registered "
        "after the device's recovery\n",
        error_name(resp.error()));
    detail::set_active(&a);
    if (b->add_reset_listener(reregister, nullptr).is_error())
      kprintf("page-states: no room for a balloon reset listener: never registered\n");
    return;
  }
  detail::set_active(&a);
  if (b->add_reset_listener(reregister, nullptr).is_error())
    kprintf("page-states: no room for a balloon reset listener: not re-registered after a reset\n");
  kprintf("page-states: registered %lu pages (array of %lu KiB at %#lx)\n", npages,
          (array_pages * kPageSize) >> 10, r.value());
  setup_ages(b, pa, a);
}

}  // namespace blimp::mm::page_states
