#include "drivers/virtio/probe_driver.h"

#include "drivers/log.h"
#include "drivers/virtio/device.h"
#include "kernel/memory.h"
#include "kernel/timer.h"
#include "lib/irq.h"

namespace blimp::virtio {

namespace {

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
  TRY(dev.start());
  TRY(vq->add_in(virt_to_phys(g_rng_buf), sizeof g_rng_buf, &g_rng));
  vq->kick();
  uint64_t deadline = timer::now_ns() + 5'000'000'000ull;
  {
    IrqGuard guard;
    while (!g_rng.done && !g_rng.error && timer::now_ns() < deadline) timer::wait_until(deadline);
  }
  drivers::log("virtio: %s at %s: roundtrip=%s (%u bytes)\n", dev.name(),
               dev.transport().location(),
               g_rng.error  ? "device-error"
               : g_rng.done ? "ok"
                            : "timeout",
               g_rng.len);
  if (!g_rng.done) return Error::Timeout;
  return {};
}

}  // namespace

void register_rng_probe_driver() {
  (void)register_driver(Driver{"rng-probe", device_id::kEntropy, &probe_rng});
}

}  // namespace blimp::virtio
