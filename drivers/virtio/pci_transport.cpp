#include "drivers/virtio/pci_transport.h"

#include "drivers/log.h"
#include "lib/atomic.h"
#include "lib/format.h"

#if defined(BLIMP_GUEST)
#include "drivers/pci/pci.h"
#include "drivers/shared_irq.h"
#include "kernel/interrupts.h"
#endif

namespace blimp::virtio {

// ---- shared ----

PciTransportBase::PciTransportBase(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t device_id)
    : bus_(bus), dev_(dev), fn_(fn), device_id_(device_id) {
  for (auto& e : queue_entry_) e = kNoVector;
  format(location_, sizeof location_, "pci %02x:%02x.%x", unsigned{bus}, unsigned{dev},
         unsigned{fn});
}

void PciTransportBase::msix_handler(void* ctx) {
  auto* v = static_cast<VectorContext*>(ctx);
  if (v->queue == kNoVector) {
    v->sink->irq_config();
  } else if (v->queue == kAllQueues) {
    for (uint16_t q = 0; q < kMaxQueues; ++q) v->sink->irq_queue(q);
  } else {
    v->sink->irq_queue(v->queue);
  }
}

ErrorOr<void> PciTransportBase::reapply_config_vector() {
  if (!msix_enabled_) return {};
  if (write_config_vector(config_entry_) == kNoVector) {
    drivers::log("virtio: %s: device refused MSI-X config vector %u\n", location_, config_entry_);
    return Error::DeviceError;
  }
  return {};
}

ErrorOr<void> PciTransportBase::setup_interrupts(InterruptSink& sink, uint16_t num_queues) {
#if defined(BLIMP_GUEST)
  if (num_queues > kMaxQueues) return Error::InvalidArgument;
  pci::Address a{bus_, dev_, fn_};
  pci::Msix msix;
  if (!msix.init(a).is_error() && msix.table_size() >= 2) {
    // One entry for configuration changes, then one per queue if the table is big enough,
    // else one shared by all queues (the handler then looks at every queue).
    bool per_queue = msix.table_size() >= num_queues + 1u;
    unsigned entries = per_queue ? num_queues + 1u : 2u;
    uint8_t first_vector = 0, last_vector = 0;
    for (unsigned e = 0; e < entries; ++e) {
      VectorContext& vc = vector_ctx_[e];
      vc.sink = &sink;
      vc.queue = e == 0 ? kNoVector : per_queue ? uint16_t(e - 1) : kAllQueues;
      uint8_t vector = TRY(interrupts::allocate_vector(&PciTransportBase::msix_handler, &vc));
      if (e == 0) first_vector = vector;
      last_vector = vector;
      msix.set_entry(uint16_t(e), vector);
    }
    msix.enable();
    msix_enabled_ = true;
    config_entry_ = 0;
    for (uint16_t q = 0; q < num_queues; ++q) queue_entry_[q] = per_queue ? uint16_t(q + 1) : 1;
    if (write_config_vector(0) == kNoVector) {
      drivers::log("virtio: %s: device refused MSI-X config vector\n", location_);
      return Error::DeviceError;
    }
    format(irq_desc_, sizeof irq_desc_, "msix=%llu vectors=%llu-%llu",
           static_cast<unsigned long long>(entries), static_cast<unsigned long long>(first_vector),
           static_cast<unsigned long long>(last_vector));
    return {};
  }
  // INTx: level-triggered, shared; the handler reads (and so clears) the ISR.
  auto route = pci::route_intx(a);
  if (route.is_error()) {
    drivers::log("virtio: %s: no MSI-X and no routable INTx pin\n", location_);
    return Error::Unsupported;
  }
  unsigned line = route.value().gsi;
  vector_ctx_[0] = {&sink, kNoVector};
  uint8_t vector = TRY(drivers::attach_gsi(
      line, true, route.value().active_low,
      [](void* ctx) { static_cast<VectorContext*>(ctx)->sink->irq_shared(); }, &vector_ctx_[0]));
  pci::set_command_bits(a, pci::command::kBusMaster, pci::command::kIntxDisable);
  format(irq_desc_, sizeof irq_desc_, "intx gsi=%llu vector=%u",
         static_cast<unsigned long long>(line), unsigned{vector});
  return {};
#else
  // Host builds (unit tests): no interrupt controller; the test delivers interrupts by calling
  // the sink (Device::irq_shared and friends) itself.
  (void)sink;
  (void)num_queues;
  format(irq_desc_, sizeof irq_desc_, "irq=host");
  return {};
#endif
}

// ---- modern ----

using namespace pci_common;

PciModernTransport::PciModernTransport(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t device_id,
                                       RegisterWindow& common, RegisterWindow& notify,
                                       uint32_t notify_multiplier, uint32_t notify_length,
                                       RegisterWindow& isr, RegisterWindow* device_cfg)
    : PciTransportBase(bus, dev, fn, device_id),
      common_(common),
      notify_(notify),
      notify_multiplier_(notify_multiplier),
      notify_length_(notify_length),
      isr_(isr),
      device_cfg_(device_cfg) {}

uint64_t PciModernTransport::device_features() {
  common_.write32(kDeviceFeatureSelect, 0);
  uint64_t lo = common_.read32(kDeviceFeature);
  common_.write32(kDeviceFeatureSelect, 1);
  uint64_t hi = common_.read32(kDeviceFeature);
  return lo | (hi << 32);
}

void PciModernTransport::set_driver_features(uint64_t f) {
  common_.write32(kDriverFeatureSelect, 0);
  common_.write32(kDriverFeature, uint32_t(f));
  common_.write32(kDriverFeatureSelect, 1);
  common_.write32(kDriverFeature, uint32_t(f >> 32));
}

uint8_t PciModernTransport::status() { return common_.read8(kDeviceStatus); }
void PciModernTransport::set_status(uint8_t s) { common_.write8(kDeviceStatus, s); }

ErrorOr<void> PciModernTransport::reset() {
  // 4.1.4.3.2: after writing 0 the driver waits until the device reads back 0.
  common_.write8(kDeviceStatus, 0);
  for (int i = 0; i < 1000000; ++i)
    if (common_.read8(kDeviceStatus) == 0) return {};
  drivers::log("virtio: %s: device did not complete reset\n", location_);
  return Error::Timeout;
}

uint32_t PciModernTransport::config_generation() { return common_.read8(kConfigGeneration); }
uint8_t PciModernTransport::config_read8(uint32_t o) {
  return device_cfg_ ? device_cfg_->read8(o) : 0;
}
uint16_t PciModernTransport::config_read16(uint32_t o) {
  return device_cfg_ ? device_cfg_->read16(o) : 0;
}
uint32_t PciModernTransport::config_read32(uint32_t o) {
  return device_cfg_ ? device_cfg_->read32(o) : 0;
}
void PciModernTransport::config_write8(uint32_t o, uint8_t v) {
  if (device_cfg_) device_cfg_->write8(o, v);
}
void PciModernTransport::config_write16(uint32_t o, uint16_t v) {
  if (device_cfg_) device_cfg_->write16(o, v);
}
void PciModernTransport::config_write32(uint32_t o, uint32_t v) {
  if (device_cfg_) device_cfg_->write32(o, v);
}

uint16_t PciModernTransport::num_queues() { return common_.read16(kNumQueues); }

uint16_t PciModernTransport::queue_max_size(uint16_t index) {
  if (index >= kMaxQueues || index >= num_queues()) return 0;
  common_.write16(kQueueSelect, index);
  if (common_.read16(kQueueEnable)) return 0;
  return common_.read16(kQueueSize);
}

uint16_t PciModernTransport::write_config_vector(uint16_t entry) {
  common_.write16(kConfigMsixVector, entry);
  return common_.read16(kConfigMsixVector);
}

ErrorOr<void> PciModernTransport::queue_enable(uint16_t index, uint16_t size, uint64_t desc,
                                               uint64_t avail, uint64_t used, uint16_t msix_entry) {
  if (index >= kMaxQueues) return Error::InvalidArgument;
  // 4.1.5.1.3 Virtqueue Configuration.
  common_.write16(kQueueSelect, index);
  common_.write16(kQueueSize, size);
  if (msix_enabled_) {
    common_.write16(kQueueMsixVector, msix_entry);
    if (common_.read16(kQueueMsixVector) != msix_entry) {
      drivers::log("virtio: %s: device refused MSI-X entry %u for queue %u\n", location_,
                   msix_entry, index);
      return Error::DeviceError;
    }
  }
  common_.write64(kQueueDesc, desc);
  common_.write64(kQueueDriver, avail);
  common_.write64(kQueueDevice, used);
  uint64_t off = uint64_t(common_.read16(kQueueNotifyOff)) * notify_multiplier_;
  if (off + 2 > notify_length_) {
    drivers::log("virtio: %s: queue %u notify offset 0x%llx outside the notify region (0x%x)\n",
                 location_, index, static_cast<unsigned long long>(off), notify_length_);
    return Error::DeviceError;
  }
  notify_offset_[index] = uint32_t(off);
  memory_barrier();
  common_.write16(kQueueEnable, 1);
  return {};
}

void PciModernTransport::notify(uint16_t index) {
  if (index >= kMaxQueues) return;
  memory_barrier();  // ring writes before the doorbell (2.7.13.4)
  notify_.write16(notify_offset_[index], index);
}

uint8_t PciModernTransport::read_isr() {
  return isr_.read8(0) & (kIsrQueue | kIsrConfig);  // 4.1.4.5: reading clears
}

// ---- legacy ----

PciLegacyTransport::PciLegacyTransport(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t device_id,
                                       RegisterWindow& io)
    : PciTransportBase(bus, dev, fn, device_id), io_(io) {}

uint64_t PciLegacyTransport::device_features() { return io_.read32(pci_legacy::kDeviceFeatures); }
void PciLegacyTransport::set_driver_features(uint64_t f) {
  io_.write32(pci_legacy::kDriverFeatures, uint32_t(f));
}
uint8_t PciLegacyTransport::status() { return io_.read8(pci_legacy::kDeviceStatus); }
void PciLegacyTransport::set_status(uint8_t s) { io_.write8(pci_legacy::kDeviceStatus, s); }

ErrorOr<void> PciLegacyTransport::reset() {
  io_.write8(pci_legacy::kDeviceStatus, 0);
  for (int i = 0; i < 1000000; ++i)
    if (io_.read8(pci_legacy::kDeviceStatus) == 0) return {};
  drivers::log("virtio: %s: device did not complete reset\n", location_);
  return Error::Timeout;
}

uint8_t PciLegacyTransport::config_read8(uint32_t o) { return io_.read8(config_base() + o); }
uint16_t PciLegacyTransport::config_read16(uint32_t o) { return io_.read16(config_base() + o); }
uint32_t PciLegacyTransport::config_read32(uint32_t o) { return io_.read32(config_base() + o); }
void PciLegacyTransport::config_write8(uint32_t o, uint8_t v) { io_.write8(config_base() + o, v); }
void PciLegacyTransport::config_write16(uint32_t o, uint16_t v) {
  io_.write16(config_base() + o, v);
}
void PciLegacyTransport::config_write32(uint32_t o, uint32_t v) {
  io_.write32(config_base() + o, v);
}

uint16_t PciLegacyTransport::queue_max_size(uint16_t index) {
  if (index >= kMaxQueues) return 0;
  io_.write16(pci_legacy::kQueueSelect, index);
  if (io_.read32(pci_legacy::kQueueAddress) != 0) return 0;  // already in use
  return io_.read16(pci_legacy::kQueueSize);
}

uint16_t PciLegacyTransport::write_config_vector(uint16_t entry) {
  io_.write16(pci_legacy::kConfigMsixVector, entry);
  return io_.read16(pci_legacy::kConfigMsixVector);
}

ErrorOr<void> PciLegacyTransport::queue_enable(uint16_t index, uint16_t size, uint64_t desc,
                                               uint64_t avail, uint64_t, uint16_t msix_entry) {
  if (index >= kMaxQueues) return Error::InvalidArgument;
  io_.write16(pci_legacy::kQueueSelect, index);
  uint16_t device_size = io_.read16(pci_legacy::kQueueSize);
  if (device_size != size) {
    drivers::log("virtio: %s: queue %u size changed from %u to %u under us\n", location_, index,
                 size, device_size);
    return Error::DeviceError;
  }
  // The legacy layout: one ring at a 4096-aligned page frame number below 16 TiB.
  if (desc % kLegacyQueueAlign != 0 || avail != desc + 16ull * size ||
      (desc >> 12) > 0xffffffffull) {
    drivers::log("virtio: %s: queue %u ring at 0x%llx unusable by a legacy device\n", location_,
                 index, static_cast<unsigned long long>(desc));
    return Error::InvalidArgument;
  }
  if (msix_enabled_) {
    io_.write16(pci_legacy::kQueueMsixVector, msix_entry);
    if (io_.read16(pci_legacy::kQueueMsixVector) != msix_entry) {
      drivers::log("virtio: %s: device refused MSI-X entry %u for queue %u\n", location_,
                   msix_entry, index);
      return Error::DeviceError;
    }
  }
  memory_barrier();
  io_.write32(pci_legacy::kQueueAddress, uint32_t(desc >> 12));
  return {};
}

void PciLegacyTransport::notify(uint16_t index) {
  memory_barrier();
  io_.write16(pci_legacy::kQueueNotify, index);
}

uint8_t PciLegacyTransport::read_isr() {
  return io_.read8(pci_legacy::kIsrStatus) & (kIsrQueue | kIsrConfig);
}

}  // namespace blimp::virtio
