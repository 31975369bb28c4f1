#include "drivers/virtio/probe_driver.h"

#include "drivers/log.h"
#include "drivers/util/try.h"
#include "drivers/virtio/device.h"
#include "kernel/memory.h"
#include "kernel/timer.h"
#include "lib/irq.h"

namespace blimp::virtio {

namespace {

// 5.5.3 Feature bits (virtio-balloon).
constexpr unsigned kMustTellHost = 0;
constexpr unsigned kStatsVq = 1;
constexpr unsigned kDeflateOnOom = 2;
constexpr unsigned kFreePageHint = 3;
constexpr unsigned kPageReporting = 5;

struct ProbeState {
  volatile bool done = false;
  volatile uint32_t len = 0;
  volatile bool error = false;
};

ProbeState g_state;
alignas(4096) uint32_t g_pfns[1024];  // one page: the deflate request

void on_deflate_used(Virtqueue& vq, void* ctx) {
  auto* st = static_cast<ProbeState*>(ctx);
  auto r = vq.drain([&](void*, uint32_t len) {
    st->len = len;
    st->done = true;
  });
  if (r.is_error()) st->error = true;
}

ErrorOr<void> probe(Device& dev) {
  g_state.done = false;
  g_state.error = false;
  uint64_t wanted = feature::bit(kMustTellHost) | feature::bit(kStatsVq) |
                    feature::bit(kDeflateOnOom) | feature::bit(kFreePageHint) |
                    feature::bit(kPageReporting);
  TRY(dev.negotiate(wanted));
  // 5.5.2: inflateq, deflateq, then statsq / free_page_vq / reporting_vq only if negotiated.
  uint16_t q = 0;
  TRY(dev.add_queue(q++, nullptr, nullptr));
  Virtqueue* deflate = TRY(dev.add_queue(q++, &on_deflate_used, &g_state));
  if (dev.has_feature(kStatsVq)) TRY(dev.add_queue(q++, nullptr, nullptr));
  if (dev.has_feature(kFreePageHint)) TRY(dev.add_queue(q++, nullptr, nullptr));
  if (dev.has_feature(kPageReporting)) TRY(dev.add_queue(q++, nullptr, nullptr));
  VTRY(dev.start());

  // Round trip: "deflate" one page we own (harmless: the host never had it inflated). The device
  // returns the buffer and interrupts; we halt until then.
  g_pfns[0] = uint32_t(virt_to_phys(g_pfns) >> kPageShift);
  VTRY(deflate->add_out(virt_to_phys(g_pfns), sizeof(uint32_t), &g_state));
  deflate->kick();
  uint64_t start = timer::now_ns();
  uint64_t deadline = start + 5'000'000'000ull;
  {
    IrqGuard guard;  // checked with interrupts off; wait_until halts with sti;hlt atomically
    while (!g_state.done && !g_state.error && timer::now_ns() < deadline)
      timer::wait_until(deadline);
  }
  const char* roundtrip = g_state.error ? "device-error" : g_state.done ? "ok" : "timeout";
  uint64_t us = (timer::now_ns() - start) / 1000;

  drivers::log("virtio: %s at %s: roundtrip=%s (%llu us)\n", dev.name(),
               dev.transport().location(), roundtrip, static_cast<unsigned long long>(us));
  if (!g_state.done) return Error::Timeout;
  return {};
}

// virtio-rng (5.4): one queue of device-writable buffers, filled with entropy. Small, and on PCI
// it has MSI-X, so it exercises the paths the balloon (INTx only on QEMU) does not.
struct RngState {
  volatile bool done = false;
  volatile bool error = false;
  volatile uint32_t len = 0;
};
RngState g_rng;
alignas(64) uint8_t g_rng_buf[64];

void on_rng_used(Virtqueue& vq, void* ctx) {
  auto* st = static_cast<RngState*>(ctx);
  auto r = vq.drain([&](void*, uint32_t len) {
    st->len = len;
    st->done = true;
  });
  if (r.is_error()) st->error = true;
}

ErrorOr<void> probe_rng(Device& dev) {
  g_rng.done = false;
  g_rng.error = false;
  g_rng.len = 0;
  TRY(dev.negotiate(0));
  Virtqueue* vq = TRY(dev.add_queue(0, &on_rng_used, &g_rng));
  VTRY(dev.start());
  VTRY(vq->add_in(virt_to_phys(g_rng_buf), sizeof g_rng_buf, &g_rng));
  vq->kick();
  uint64_t deadline = timer::now_ns() + 5'000'000'000ull;
  {
    IrqGuard guard;
    while (!g_rng.done && !g_rng.error && timer::now_ns() < deadline) timer::wait_until(deadline);
  }
  drivers::log("virtio: %s at %s: roundtrip=%s (%u bytes)\n", dev.name(),
               dev.transport().location(),
               g_rng.error ? "device-error" : g_rng.done ? "ok" : "timeout", g_rng.len);
  if (!g_rng.done) return Error::Timeout;
  return {};
}

}  // namespace

void register_probe_driver() {
  (void)register_driver(Driver{"balloon-probe", device_id::kBalloon, &probe});
}

void register_rng_probe_driver() {
  (void)register_driver(Driver{"rng-probe", device_id::kEntropy, &probe_rng});
}

}  // namespace blimp::virtio
