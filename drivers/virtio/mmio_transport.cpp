#include "drivers/virtio/mmio_transport.h"

#include "drivers/log.h"
#include "drivers/virtio/virtio.h"
#include "lib/atomic.h"
#include "lib/format.h"

#if defined(BLIMP_GUEST)
#include "drivers/shared_irq.h"
#endif

namespace blimp::virtio {

using namespace mmio_reg;

MmioTransport::MmioTransport(RegisterWindow& regs, uint64_t phys_base, uint32_t gsi,
                             bool level_triggered, bool active_low)
    : regs_(regs),
      phys_base_(phys_base),
      gsi_(gsi),
      level_triggered_(level_triggered),
      active_low_(active_low) {
  format(location_, sizeof location_, "mmio 0x%llx", static_cast<unsigned long long>(phys_base));
}

ErrorOr<void> MmioTransport::init() {
  uint32_t magic = regs_.read32(kMagic);
  if (magic != kMagicValue) {
    drivers::log("virtio: %s: bad magic 0x%x, not a virtio-mmio device\n", location_, magic);
    return Error::DeviceError;
  }
  version_ = regs_.read32(kVersion);
  if (version_ != 1 && version_ != 2) {
    drivers::log("virtio: %s: unsupported virtio-mmio version %u\n", location_, version_);
    return Error::Unsupported;
  }
  uint32_t id = regs_.read32(kDeviceId);
  if (id == 0) return Error::NotFound;  // 4.2.3.1.1: an empty slot; not an error
  if (id > 0xffff) {
    drivers::log("virtio: %s: bogus device id 0x%x\n", location_, id);
    return Error::DeviceError;
  }
  device_id_ = uint16_t(id);
  return {};
}

uint64_t MmioTransport::device_features() {
  regs_.write32(kDeviceFeaturesSel, 0);
  uint64_t lo = regs_.read32(kDeviceFeatures);
  if (!modern()) return lo;  // legacy devices expose 32 feature bits
  regs_.write32(kDeviceFeaturesSel, 1);
  uint64_t hi = regs_.read32(kDeviceFeatures);
  return lo | (hi << 32);
}

void MmioTransport::set_driver_features(uint64_t features) {
  regs_.write32(kDriverFeaturesSel, 0);
  regs_.write32(kDriverFeatures, uint32_t(features));
  if (!modern()) return;
  regs_.write32(kDriverFeaturesSel, 1);
  regs_.write32(kDriverFeatures, uint32_t(features >> 32));
}

uint8_t MmioTransport::status() { return uint8_t(regs_.read32(kStatus)); }
void MmioTransport::set_status(uint8_t s) { regs_.write32(kStatus, s); }

ErrorOr<void> MmioTransport::reset() {
  regs_.write32(kStatus, 0);
  for (int i = 0; i < 1000000; ++i) {
    if (regs_.read32(kStatus) == 0) return {};
  }
  drivers::log("virtio: %s: device did not complete reset\n", location_);
  return Error::Timeout;
}

uint32_t MmioTransport::config_generation() {
  return modern() ? regs_.read32(kConfigGeneration) : 0;
}
uint8_t MmioTransport::config_read8(uint32_t o) { return regs_.read8(kConfig + o); }
uint16_t MmioTransport::config_read16(uint32_t o) { return regs_.read16(kConfig + o); }
uint32_t MmioTransport::config_read32(uint32_t o) { return regs_.read32(kConfig + o); }
void MmioTransport::config_write8(uint32_t o, uint8_t v) { regs_.write8(kConfig + o, v); }
void MmioTransport::config_write16(uint32_t o, uint16_t v) { regs_.write16(kConfig + o, v); }
void MmioTransport::config_write32(uint32_t o, uint32_t v) { regs_.write32(kConfig + o, v); }

uint16_t MmioTransport::queue_max_size(uint16_t index) {
  regs_.write32(kQueueSel, index);
  // 4.2.3.2 / 4.2.4: a queue already in use is not offered again.
  if (modern() ? regs_.read32(kQueueReady) != 0 : regs_.read32(kQueuePfn) != 0) return 0;
  uint32_t max = regs_.read32(kQueueNumMax);
  return max > 0xffff ? 0xffff : uint16_t(max);  // the caller validates the value
}

ErrorOr<void> MmioTransport::queue_enable(uint16_t index, uint16_t size, uint64_t desc,
                                          uint64_t avail, uint64_t used, uint16_t) {
  regs_.write32(kQueueSel, index);
  regs_.write32(kQueueNum, size);
  if (modern()) {
    // 4.2.3.2 Virtqueue Configuration.
    regs_.write64(kQueueDescLow, desc);
    regs_.write64(kQueueDriverLow, avail);
    regs_.write64(kQueueDeviceLow, used);
    memory_barrier();
    regs_.write32(kQueueReady, 1);
    if (regs_.read32(kQueueReady) != 1) {
      drivers::log("virtio: %s: queue %u did not become ready\n", location_, index);
      return Error::DeviceError;
    }
    return {};
  }
  // 4.2.4 Legacy interface: one contiguous ring at a page frame number, used ring aligned to
  // QueueAlign (Virtqueue always lays rings out that way).
  if (desc % kLegacyQueueAlign != 0 || avail != desc + 16ull * size ||
      (desc >> 12) > 0xffffffffull) {
    drivers::log("virtio: %s: queue %u ring at 0x%llx unusable by a legacy device\n", location_,
                 index, static_cast<unsigned long long>(desc));
    return Error::InvalidArgument;
  }
  (void)used;
  regs_.write32(kGuestPageSize, 4096);
  regs_.write32(kQueueAlign, kLegacyQueueAlign);
  memory_barrier();
  regs_.write32(kQueuePfn, uint32_t(desc >> 12));
  return {};
}

void MmioTransport::notify(uint16_t index) {
  // Ring writes must be visible before the device is told to look (2.7.13.4).
  memory_barrier();
  regs_.write32(kQueueNotify, index);
}

uint8_t MmioTransport::read_isr() {
  uint32_t isr = regs_.read32(kInterruptStatus);
  if (isr) regs_.write32(kInterruptAck, isr);
  return uint8_t(isr & (kIsrQueue | kIsrConfig));
}

ErrorOr<void> MmioTransport::setup_interrupts(InterruptSink& sink, uint16_t) {
#if defined(BLIMP_GUEST)
  if (irq_ready_) return {};
  // QEMU's microvm describes its virtio-mmio lines in ACPI as level-triggered, active high;
  // from the command line (no ACPI) they are edge-triggered ISA-style lines. Either works with
  // the read-and-ack in irq_shared: the device drops the line once InterruptStatus is acked.
  uint8_t vector = TRY(drivers::attach_gsi(
      gsi_, level_triggered_, active_low_,
      [](void* ctx) { static_cast<InterruptSink*>(ctx)->irq_shared(); }, &sink));
  irq_ready_ = true;
  format(irq_desc_, sizeof irq_desc_, "irq=%llu %s vector=%u",
         static_cast<unsigned long long>(gsi_), level_triggered_ ? "level" : "edge",
         unsigned{vector});
  return {};
#else
  // Host builds (unit tests): no interrupt controller; the test delivers interrupts by calling
  // the sink (Device::irq_shared and friends) itself.
  (void)sink;
  format(irq_desc_, sizeof irq_desc_, "irq=host");
  return {};
#endif
}

}  // namespace blimp::virtio
