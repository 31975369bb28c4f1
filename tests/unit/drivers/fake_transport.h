// Fake register files behind the real transports: a virtio-mmio device (version 1 and 2), a
// legacy virtio-pci I/O BAR, and the four modern virtio-pci structures. Each models the register
// semantics the spec gives (selectors, FEATURES_OK acceptance, reset clearing queues, read-to-clear
// ISR) so the transports and the device layer run unchanged against them.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "drivers/virtio/mmio_transport.h"
#include "drivers/virtio/pci_transport.h"
#include "drivers/virtio/register_window.h"
#include "drivers/virtio/virtio.h"

namespace blimp::virtio::test {

struct FakeQueue {
  uint32_t num_max = 128;
  uint32_t num = 0;
  uint32_t ready = 0;
  uint64_t desc = 0, driver = 0, device = 0;
  uint32_t align = 0, pfn = 0;
  uint16_t msix = kNoVector;
  uint16_t notify_off = 0;
};

// Device state shared by all fakes.
struct FakeDeviceState {
  uint16_t device_id = 5;
  uint64_t features = 0;
  uint64_t driver_features = 0;
  uint32_t dev_sel = 0, drv_sel = 0;
  uint8_t status = 0;
  bool accept_features = true;  // false: clears FEATURES_OK like a device refusing our subset
  std::vector<uint8_t> status_writes;
  FakeQueue q[16];
  uint16_t num_queues = 3;
  uint32_t queue_sel = 0;
  std::vector<uint32_t> notifies;
  uint8_t isr = 0;
  uint8_t config[256] = {};
  uint32_t generation = 0;
  int tear_reads = 0;  // the next N config reads each bump the generation and the value at 0
  uint16_t config_msix = kNoVector;

  void write_status(uint8_t v) {
    status_writes.push_back(v);
    if (v == 0) {
      status = 0;
      for (auto& qq : q) qq.ready = 0, qq.pfn = 0, qq.msix = kNoVector;
      isr = 0;
      config_msix = kNoVector;
      driver_features = 0;
      return;
    }
    if ((v & status::kFeaturesOk) && !accept_features) v &= uint8_t(~status::kFeaturesOk);
    status = v;
  }
  uint8_t config_byte(uint32_t off) {
    if (tear_reads > 0) {
      --tear_reads;
      ++generation;
      ++config[0];
    }
    return off < sizeof config ? config[off] : 0;
  }
  uint32_t config_read(uint32_t off, unsigned width) {
    uint32_t v = 0;
    uint8_t first = config_byte(off);
    v = first;
    for (unsigned i = 1; i < width; ++i)
      v |= uint32_t(off + i < sizeof config ? config[off + i] : 0) << (8 * i);
    return v;
  }
  void config_write(uint32_t off, unsigned width, uint32_t v) {
    for (unsigned i = 0; i < width && off + i < sizeof config; ++i)
      config[off + i] = uint8_t(v >> (8 * i));
  }
};

class FakeMmio final : public RegisterWindow {
 public:
  explicit FakeMmio(FakeDeviceState& s, uint32_t version) : s_(s), version_(version) {}
  uint32_t guest_page_size = 0;
  uint32_t magic = mmio_reg::kMagicValue;

  uint8_t read8(uint32_t off) override {
    if (off >= mmio_reg::kConfig) return uint8_t(s_.config_read(off - mmio_reg::kConfig, 1));
    return uint8_t(read32(off));
  }
  uint16_t read16(uint32_t off) override {
    if (off >= mmio_reg::kConfig) return uint16_t(s_.config_read(off - mmio_reg::kConfig, 2));
    return uint16_t(read32(off));
  }
  uint32_t read32(uint32_t off) override {
    using namespace mmio_reg;
    if (off >= kConfig) return s_.config_read(off - kConfig, 4);
    FakeQueue& q = s_.q[s_.queue_sel % 16];
    switch (off) {
      case kMagic: return magic;
      case kVersion: return version_;
      case kDeviceId: return s_.device_id;
      case kVendorId: return 0x554d4551;
      case kDeviceFeatures:
        return s_.dev_sel == 0   ? uint32_t(s_.features)
               : s_.dev_sel == 1 ? uint32_t(s_.features >> 32)
                                 : 0;
      case kQueueNumMax: return s_.queue_sel < s_.num_queues ? q.num_max : 0;
      case kQueueReady: return q.ready;
      case kQueuePfn: return q.pfn;
      case kInterruptStatus: return s_.isr;
      case kStatus: return s_.status;
      case kConfigGeneration: return s_.generation;
    }
    return 0;
  }
  void write8(uint32_t off, uint8_t v) override {
    if (off >= mmio_reg::kConfig) s_.config_write(off - mmio_reg::kConfig, 1, v);
  }
  void write16(uint32_t off, uint16_t v) override {
    if (off >= mmio_reg::kConfig) s_.config_write(off - mmio_reg::kConfig, 2, v);
  }
  void write32(uint32_t off, uint32_t v) override {
    using namespace mmio_reg;
    if (off >= kConfig) return s_.config_write(off - kConfig, 4, v);
    FakeQueue& q = s_.q[s_.queue_sel % 16];
    switch (off) {
      case kDeviceFeaturesSel: s_.dev_sel = v; break;
      case kDriverFeaturesSel: s_.drv_sel = v; break;
      case kDriverFeatures:
        if (s_.drv_sel < 2) {
          uint64_t mask = uint64_t(0xffffffff) << (32 * s_.drv_sel);
          s_.driver_features = (s_.driver_features & ~mask) | (uint64_t(v) << (32 * s_.drv_sel));
        }
        break;
      case kGuestPageSize: guest_page_size = v; break;
      case kQueueSel: s_.queue_sel = v; break;
      case kQueueNum: q.num = v; break;
      case kQueueAlign: q.align = v; break;
      case kQueuePfn: q.pfn = v; break;
      case kQueueReady: q.ready = v; break;
      case kQueueNotify: s_.notifies.push_back(v); break;
      case kInterruptAck: s_.isr = uint8_t(s_.isr & ~v); break;
      case kStatus: s_.write_status(uint8_t(v)); break;
      case kQueueDescLow: q.desc = (q.desc & ~0xffffffffull) | v; break;
      case kQueueDescLow + 4: q.desc = (q.desc & 0xffffffffull) | (uint64_t(v) << 32); break;
      case kQueueDriverLow: q.driver = (q.driver & ~0xffffffffull) | v; break;
      case kQueueDriverLow + 4: q.driver = (q.driver & 0xffffffffull) | (uint64_t(v) << 32); break;
      case kQueueDeviceLow: q.device = (q.device & ~0xffffffffull) | v; break;
      case kQueueDeviceLow + 4: q.device = (q.device & 0xffffffffull) | (uint64_t(v) << 32); break;
    }
  }

 private:
  FakeDeviceState& s_;
  uint32_t version_;
};

// Legacy virtio-pci I/O BAR 0 (4.1.4.8).
class FakeLegacyPci final : public RegisterWindow {
 public:
  explicit FakeLegacyPci(FakeDeviceState& s) : s_(s) {}
  bool msix = false;  // device config moves from 20 to 24 while MSI-X is enabled

  uint8_t read8(uint32_t off) override {
    using namespace pci_legacy;
    if (off >= cfg()) return uint8_t(s_.config_read(off - cfg(), 1));
    if (off == kDeviceStatus) return s_.status;
    if (off == kIsrStatus) {
      uint8_t v = s_.isr;
      s_.isr = 0;  // read to clear
      return v;
    }
    return 0;
  }
  uint16_t read16(uint32_t off) override {
    using namespace pci_legacy;
    if (off >= cfg()) return uint16_t(s_.config_read(off - cfg(), 2));
    FakeQueue& q = s_.q[s_.queue_sel % 16];
    switch (off) {
      case kQueueSize: return s_.queue_sel < s_.num_queues ? uint16_t(q.num_max) : 0;
      case kQueueSelect: return uint16_t(s_.queue_sel);
      case kConfigMsixVector: return msix ? s_.config_msix : 0;
      case kQueueMsixVector: return msix ? q.msix : 0;
    }
    return 0;
  }
  uint32_t read32(uint32_t off) override {
    using namespace pci_legacy;
    if (off >= cfg()) return s_.config_read(off - cfg(), 4);
    if (off == kDeviceFeatures) return uint32_t(s_.features);
    if (off == kQueueAddress) return s_.q[s_.queue_sel % 16].pfn;
    return 0;
  }
  void write8(uint32_t off, uint8_t v) override {
    using namespace pci_legacy;
    if (off >= cfg()) return s_.config_write(off - cfg(), 1, v);
    if (off == kDeviceStatus) s_.write_status(v);
  }
  void write16(uint32_t off, uint16_t v) override {
    using namespace pci_legacy;
    if (off >= cfg()) return s_.config_write(off - cfg(), 2, v);
    switch (off) {
      case kQueueSelect: s_.queue_sel = v; break;
      case kQueueNotify: s_.notifies.push_back(v); break;
      case kConfigMsixVector:
        if (msix) s_.config_msix = v;
        break;
      case kQueueMsixVector:
        if (msix) s_.q[s_.queue_sel % 16].msix = v;
        break;
    }
  }
  void write32(uint32_t off, uint32_t v) override {
    using namespace pci_legacy;
    if (off >= cfg()) return s_.config_write(off - cfg(), 4, v);
    if (off == kDriverFeatures) s_.driver_features = v;
    if (off == kQueueAddress) s_.q[s_.queue_sel % 16].pfn = v;
  }

 private:
  uint32_t cfg() const { return msix ? pci_legacy::kConfigMsix : pci_legacy::kConfigNoMsix; }
  FakeDeviceState& s_;
};

// Modern virtio-pci: common configuration (4.1.4.3), notify (4.1.4.4), ISR (4.1.4.5) and device
// configuration (4.1.4.6) structures as four windows.
struct FakeModernPci {
  explicit FakeModernPci(FakeDeviceState& s) : common(s), notify(s, *this), isr(s), device(s) {}
  uint32_t notify_multiplier = 4;

  struct Common final : RegisterWindow {
    explicit Common(FakeDeviceState& s) : s_(s) {}
    uint8_t read8(uint32_t off) override {
      if (off == pci_common::kDeviceStatus) return s_.status;
      if (off == pci_common::kConfigGeneration) return uint8_t(s_.generation);
      return 0;
    }
    uint16_t read16(uint32_t off) override {
      using namespace pci_common;
      FakeQueue& q = s_.q[s_.queue_sel % 16];
      switch (off) {
        case kConfigMsixVector: return s_.config_msix;
        case kNumQueues: return s_.num_queues;
        case kQueueSelect: return uint16_t(s_.queue_sel);
        case kQueueSize:
          return s_.queue_sel < s_.num_queues ? uint16_t(q.num ? q.num : q.num_max) : 0;
        case kQueueMsixVector: return q.msix;
        case kQueueEnable: return uint16_t(q.ready);
        case kQueueNotifyOff: return q.notify_off;
      }
      return 0;
    }
    uint32_t read32(uint32_t off) override {
      using namespace pci_common;
      if (off == kDeviceFeature)
        return s_.dev_sel == 0   ? uint32_t(s_.features)
               : s_.dev_sel == 1 ? uint32_t(s_.features >> 32)
                                 : 0;
      return 0;
    }
    void write8(uint32_t off, uint8_t v) override {
      if (off == pci_common::kDeviceStatus) s_.write_status(v);
    }
    void write16(uint32_t off, uint16_t v) override {
      using namespace pci_common;
      FakeQueue& q = s_.q[s_.queue_sel % 16];
      switch (off) {
        case kConfigMsixVector: s_.config_msix = msix_ok ? v : kNoVector; break;
        case kQueueSelect: s_.queue_sel = v; break;
        case kQueueSize: q.num = v; break;
        case kQueueMsixVector: q.msix = msix_ok ? v : kNoVector; break;
        case kQueueEnable: q.ready = v; break;
      }
    }
    void write32(uint32_t off, uint32_t v) override {
      using namespace pci_common;
      FakeQueue& q = s_.q[s_.queue_sel % 16];
      auto half = [&](uint64_t& r, uint32_t base) {
        if (off == base) r = (r & ~0xffffffffull) | v;
        if (off == base + 4) r = (r & 0xffffffffull) | (uint64_t(v) << 32);
      };
      switch (off) {
        case kDeviceFeatureSelect: s_.dev_sel = v; return;
        case kDriverFeatureSelect: s_.drv_sel = v; return;
        case kDriverFeature:
          if (s_.drv_sel < 2) {
            uint64_t mask = uint64_t(0xffffffff) << (32 * s_.drv_sel);
            s_.driver_features = (s_.driver_features & ~mask) | (uint64_t(v) << (32 * s_.drv_sel));
          }
          return;
      }
      half(q.desc, kQueueDesc);
      half(q.driver, kQueueDriver);
      half(q.device, kQueueDevice);
    }
    bool msix_ok = true;
    FakeDeviceState& s_;
  } common;

  struct Notify final : RegisterWindow {
    Notify(FakeDeviceState& s, FakeModernPci& p) : s_(s), p_(p) {}
    uint8_t read8(uint32_t) override { return 0; }
    uint16_t read16(uint32_t) override { return 0; }
    uint32_t read32(uint32_t) override { return 0; }
    void write8(uint32_t, uint8_t) override {}
    void write16(uint32_t off, uint16_t v) override {
      offsets.push_back(off);
      s_.notifies.push_back(v);
    }
    void write32(uint32_t, uint32_t) override {}
    std::vector<uint32_t> offsets;
    FakeDeviceState& s_;
    FakeModernPci& p_;
  } notify;

  struct Isr final : RegisterWindow {
    explicit Isr(FakeDeviceState& s) : s_(s) {}
    uint8_t read8(uint32_t) override {
      uint8_t v = s_.isr;
      s_.isr = 0;
      return v;
    }
    uint16_t read16(uint32_t) override { return 0; }
    uint32_t read32(uint32_t) override { return 0; }
    void write8(uint32_t, uint8_t) override {}
    void write16(uint32_t, uint16_t) override {}
    void write32(uint32_t, uint32_t) override {}
    FakeDeviceState& s_;
  } isr;

  struct DeviceCfg final : RegisterWindow {
    explicit DeviceCfg(FakeDeviceState& s) : s_(s) {}
    uint8_t read8(uint32_t off) override { return uint8_t(s_.config_read(off, 1)); }
    uint16_t read16(uint32_t off) override { return uint16_t(s_.config_read(off, 2)); }
    uint32_t read32(uint32_t off) override { return s_.config_read(off, 4); }
    void write8(uint32_t off, uint8_t v) override { s_.config_write(off, 1, v); }
    void write16(uint32_t off, uint16_t v) override { s_.config_write(off, 2, v); }
    void write32(uint32_t off, uint32_t v) override { s_.config_write(off, 4, v); }
    FakeDeviceState& s_;
  } device;
};

}  // namespace blimp::virtio::test
