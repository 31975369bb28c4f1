#include "drivers/virtio/device.h"

#include "drivers/log.h"
#include "lib/format.h"

namespace blimp::virtio {

const char* device_name(uint16_t id) {
  switch (id) {
    case device_id::kNet: return "net";
    case device_id::kBlock: return "block";
    case device_id::kConsole: return "console";
    case device_id::kEntropy: return "rng";
    case device_id::kBalloon: return "balloon";
    case device_id::kScsi: return "scsi";
    case device_id::k9p: return "9p";
    case device_id::kGpu: return "gpu";
    case device_id::kInput: return "input";
    case device_id::kVsock: return "vsock";
    case device_id::kMem: return "mem";
  }
  return "unknown";
}

Device::~Device() = default;

void Device::fail(const char* why) {
  drivers::log("virtio: %s at %s: %s; device marked FAILED\n", name(), transport_.location(), why);
  transport_.set_status(uint8_t(transport_.status() | status::kFailed));
}

ErrorOr<uint64_t> Device::negotiate(uint64_t wanted) {
  // 3.1.1 steps 1-3.
  if (auto r = transport_.reset(); r.is_error()) {
    fail("reset did not complete");
    return r.error();
  }
  started_ = false;
  dead_ = false;
  transport_.set_status(status::kAcknowledge);
  transport_.set_status(status::kAcknowledge | status::kDriver);

  // Step 4: the driver's device bits, plus the ring features this core implements.
  uint64_t offered = transport_.device_features();
  uint64_t accept = (wanted & ~feature::kTransportMask) | feature::kCoreSupported;
  uint64_t negotiated = offered & accept;
  if (transport_.modern()) {
    if (!(offered & feature::bit(feature::kVersion1))) {
      fail("modern interface but the device does not offer VIRTIO_F_VERSION_1");
      return Error::Unsupported;
    }
  } else {
    negotiated &= 0xffffffffull;  // legacy: 32 feature bits, never VERSION_1
  }
  transport_.set_driver_features(negotiated);

  // Steps 5-6 (not on legacy interfaces, which have no FEATURES_OK).
  if (transport_.modern()) {
    transport_.set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
    if (!(transport_.status() & status::kFeaturesOk)) {
      fail("device did not accept our feature subset (FEATURES_OK cleared)");
      return Error::Unsupported;
    }
  }
  features_ = negotiated;
  negotiated_ = true;
  return negotiated;
}

void Device::notify_trampoline(void* ctx, uint16_t index) {
  static_cast<Device*>(ctx)->transport_.notify(index);
}

ErrorOr<Virtqueue*> Device::add_queue(uint16_t index, Virtqueue::Callback cb, void* ctx,
                                      const QueueOptions& options) {
  if (!negotiated_ || started_ || index >= kMaxQueues) return Error::InvalidArgument;
  if (queues_[index].used) return Error::Busy;
  uint32_t max = transport_.queue_max_size(index);
  if (max == 0) {
    drivers::log("virtio: %s at %s: queue %u does not exist\n", name(), transport_.location(),
                 index);
    return Error::NotFound;
  }
  uint32_t size;
  if (transport_.queue_size_negotiable()) {
    // Any power of two up to the device's maximum will do (4.1.4.3.2 / 4.2.3.2).
    size = max;
    if (size > options.max_size) size = options.max_size;
    if (size > kMaxQueueSize) size = kMaxQueueSize;
    if (size > kMaxSpecQueueSize) size = kMaxSpecQueueSize;
    if (size == 0) return Error::InvalidArgument;
    size = uint32_t(1) << (31 - __builtin_clz(size));  // round down to a power of two
  } else {
    // Legacy PCI: the device dictates the size (4.1.5.1.4.1 legacy), so it must be sane.
    if ((max & (max - 1)) != 0) {
      drivers::log("virtio: %s at %s: queue %u size %u is not a power of two\n", name(),
                   transport_.location(), index, max);
      fail("bad queue size");
      return Error::DeviceError;
    }
    if (max > kMaxQueueSize) {
      drivers::log("virtio: %s at %s: queue %u size %u larger than the %u we support\n", name(),
                   transport_.location(), index, max, kMaxQueueSize);
      fail("bad queue size");
      return Error::DeviceError;
    }
    size = max;
  }
  Virtqueue::Options o;
  o.size = uint16_t(size);
  o.event_idx = has_feature(feature::kEventIdx);
  o.max_indirect = has_feature(feature::kIndirectDesc) ? options.max_indirect : 0;
  QueueSlot& slot = queues_[index];
  TRY(slot.vq.init(index, o, dma_, &Device::notify_trampoline, this));
  slot.vq.set_callback(cb, ctx);
  char qname[32];
  format(qname, sizeof qname, "virtio: %s", name());
  slot.vq.set_name(qname);
  slot.used = true;
  if (index + 1u > num_queues_) num_queues_ = index + 1u;
  return &slot.vq;
}

Virtqueue* Device::queue(uint16_t index) {
  if (index >= kMaxQueues || !queues_[index].used) return nullptr;
  return &queues_[index].vq;
}

ErrorOr<void> Device::enable_queues() {
  for (uint16_t i = 0; i < num_queues_; ++i) {
    if (!queues_[i].used) continue;
    Virtqueue& vq = queues_[i].vq;
    auto r = transport_.queue_enable(i, vq.size(), vq.desc_phys(), vq.avail_phys(), vq.used_phys(),
                                     transport_.queue_msix_entry(i));
    if (r.is_error()) {
      fail("queue setup failed");
      return r.error();
    }
  }
  return {};
}

ErrorOr<void> Device::start() {
  if (!negotiated_ || started_) return Error::InvalidArgument;
  if (!interrupts_ready_) {
    auto r = transport_.setup_interrupts(*this, uint16_t(num_queues_));
    if (r.is_error()) {
      fail("could not set up interrupts");
      return r.error();
    }
    interrupts_ready_ = true;
  } else {
    // Started before (negotiate() reset the device): the device forgot its MSI-X config vector.
    TRY(transport_.reapply_config_vector());
  }
  TRY(enable_queues());
  // Step 8: DRIVER_OK. From here the device may use the queues and raise interrupts.
  transport_.set_status(uint8_t(transport_.status() | status::kDriverOk));
  started_ = true;
  return check_alive();
}

void Device::device_lost(const char* why) {
  if (dead_) return;
  dead_ = true;
  drivers::log("virtio: %s at %s: %s; queues stopped, driver must recover\n", name(),
               transport_.location(), why);
  for (auto& q : queues_)
    if (q.used) q.vq.mark_broken(nullptr);
  if (error_cb_) error_cb_(*this, error_ctx_);
}

ErrorOr<void> Device::check_alive() {
  if (dead_) return Error::DeviceError;
  if (!started_) return {};
  uint8_t s = transport_.status();
  if (s == 0) {
    device_lost("device reset itself (status reads 0)");
    return Error::DeviceError;
  }
  if (s & status::kDeviceNeedsReset) {
    device_lost("device set DEVICE_NEEDS_RESET");
    return Error::DeviceError;
  }
  return {};
}

ErrorOr<void> Device::reset() {
  for (auto& q : queues_)
    if (q.used) q.vq.mark_broken(nullptr);
  started_ = false;
  return transport_.reset();
}

ErrorOr<void> Device::recover(void (*reclaim)(uint16_t, void*, void*), void* ctx) {
  if (!negotiated_) return Error::InvalidArgument;
  started_ = false;
  for (auto& q : queues_)
    if (q.used) q.vq.mark_broken(nullptr);
  TRY(transport_.reset());
  for (uint16_t i = 0; i < kMaxQueues; ++i) {
    if (!queues_[i].used) continue;
    while (void* t = queues_[i].vq.detach_unused())
      if (reclaim) reclaim(i, t, ctx);
    queues_[i].vq.reset_ring();
  }
  transport_.set_status(status::kAcknowledge);
  transport_.set_status(status::kAcknowledge | status::kDriver);
  uint64_t offered = transport_.device_features();
  if ((offered & features_) != features_) {
    fail("device no longer offers the features negotiated before the reset");
    return Error::DeviceError;
  }
  transport_.set_driver_features(features_);
  if (transport_.modern()) {
    transport_.set_status(status::kAcknowledge | status::kDriver | status::kFeaturesOk);
    if (!(transport_.status() & status::kFeaturesOk)) {
      fail("device refused the same features after reset");
      return Error::DeviceError;
    }
  }
  TRY(transport_.reapply_config_vector());
  TRY(enable_queues());
  dead_ = false;
  transport_.set_status(uint8_t(transport_.status() | status::kDriverOk));
  started_ = true;
  drivers::log("virtio: %s at %s: reinitialised after reset\n", name(), transport_.location());
  return check_alive();
}

uint64_t Device::config_read_once(uint32_t offset, unsigned width) {
  switch (width) {
    case 1: return transport_.config_read8(offset);
    case 2: return transport_.config_read16(offset);
    case 4: return transport_.config_read32(offset);
    default:
      return transport_.config_read32(offset) |
             (uint64_t(transport_.config_read32(offset + 4)) << 32);
  }
}

uint64_t Device::config_read_raw(uint32_t offset, unsigned width) {
  uint64_t v = 0;
  if (transport_.modern()) {
    // 2.5.1 / 4.1.4.3.1: retry while the generation counter changes under us.
    for (int tries = 0; tries < 1000; ++tries) {
      uint32_t before = transport_.config_generation();
      v = config_read_once(offset, width);
      if (transport_.config_generation() == before) return v;
    }
  } else {
    // Legacy: no generation counter; reading until two reads agree catches torn fields.
    v = config_read_once(offset, width);
    for (int tries = 0; tries < 1000; ++tries) {
      uint64_t again = config_read_once(offset, width);
      if (again == v) return v;
      v = again;
    }
  }
  drivers::log("virtio: %s at %s: configuration space keeps changing under us\n", name(),
               transport_.location());
  return v;
}

void Device::config_write_raw(uint32_t offset, unsigned width, uint64_t v) {
  switch (width) {
    case 1: transport_.config_write8(offset, uint8_t(v)); break;
    case 2: transport_.config_write16(offset, uint16_t(v)); break;
    case 4: transport_.config_write32(offset, uint32_t(v)); break;
    default:
      transport_.config_write32(offset, uint32_t(v));
      transport_.config_write32(offset + 4, uint32_t(v >> 32));
  }
}

void Device::irq_shared() {
  // Read-and-acknowledge first, then look at the rings: anything completed after the ack raises
  // a fresh interrupt, anything before it is seen by the scan below.
  uint8_t isr = transport_.read_isr();
  if (isr & kIsrConfig) irq_config();
  if (isr & kIsrQueue)
    for (uint16_t i = 0; i < num_queues_; ++i) irq_queue(i);
}

void Device::irq_config() {
  if (started_ && check_alive().is_error()) return;
  if (config_cb_) config_cb_(*this, config_ctx_);
}

void Device::irq_queue(uint16_t index) {
  if (index < kMaxQueues && queues_[index].used) queues_[index].vq.interrupt();
}

void Device::describe(char* buf, unsigned long size) const {
  // Appends with lib/format.h, which truncates (and NUL-terminates) at `size`.
  size_t n = format(buf, size, "features=0x%llx queues=%u",
                    static_cast<unsigned long long>(features_), num_queues_);
  auto end = [&] { return buf + (n < size ? n : size); };
  auto room = [&] { return n < size ? size - n : size_t{0}; };
  const char* sep = " sizes=";
  for (unsigned i = 0; i < num_queues_; ++i) {
    if (queues_[i].used)
      n += format(end(), room(), "%s%u", sep, unsigned{queues_[i].vq.size()});
    else
      n += format(end(), room(), "%s-", sep);
    sep = "/";
  }
  n += format(end(), room(), "%s%s %s", has_feature(feature::kEventIdx) ? " event_idx" : "",
              has_feature(feature::kIndirectDesc) ? " indirect" : "", transport_.irq_description());
}

// ---- driver registry ----

namespace {
constexpr unsigned kMaxDrivers = 16;
Driver g_drivers[kMaxDrivers];
unsigned g_num_drivers;
}  // namespace

ErrorOr<void> register_driver(const Driver& driver) {
  if (!driver.probe) return Error::InvalidArgument;
  for (unsigned i = 0; i < g_num_drivers; ++i) {
    if (g_drivers[i].device_id == driver.device_id) {
      g_drivers[i] = driver;
      return {};
    }
  }
  if (g_num_drivers == kMaxDrivers) return Error::LimitReached;
  g_drivers[g_num_drivers++] = driver;
  return {};
}

const Driver* find_driver(uint16_t device_id) {
  for (unsigned i = 0; i < g_num_drivers; ++i)
    if (g_drivers[i].device_id == device_id) return &g_drivers[i];
  return nullptr;
}

}  // namespace blimp::virtio
