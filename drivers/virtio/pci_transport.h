// virtio over PCI (virtio 1.2, 4.1): the modern interface (vendor capabilities pointing at the
// common, notify, ISR and device configuration structures, 4.1.4) and the legacy interface (one
// I/O BAR, 4.1.4.8). Interrupts through MSI-X where the function has it, INTx otherwise.
//
// Register access goes through RegisterWindows; PCI config space (capabilities, BARs, MSI-X) is
// touched only by the guest-side probe (drivers/virtio/pci_probe.cpp) and setup_interrupts.
#pragma once

#include "drivers/virtio/register_window.h"
#include "drivers/virtio/transport.h"
#include "drivers/virtio/virtio.h"

namespace blimp::virtio {

// 4.1.4 Virtio Structure PCI Capabilities: cfg_type values.
namespace pci_cap {
constexpr uint8_t kCommonCfg = 1;
constexpr uint8_t kNotifyCfg = 2;
constexpr uint8_t kIsrCfg = 3;
constexpr uint8_t kDeviceCfg = 4;
constexpr uint8_t kPciCfg = 5;
}  // namespace pci_cap

// 4.1.4.3 Common configuration structure layout.
namespace pci_common {
constexpr uint32_t kDeviceFeatureSelect = 0;
constexpr uint32_t kDeviceFeature = 4;
constexpr uint32_t kDriverFeatureSelect = 8;
constexpr uint32_t kDriverFeature = 12;
constexpr uint32_t kConfigMsixVector = 16;
constexpr uint32_t kNumQueues = 18;
constexpr uint32_t kDeviceStatus = 20;
constexpr uint32_t kConfigGeneration = 21;
constexpr uint32_t kQueueSelect = 22;
constexpr uint32_t kQueueSize = 24;
constexpr uint32_t kQueueMsixVector = 26;
constexpr uint32_t kQueueEnable = 28;
constexpr uint32_t kQueueNotifyOff = 30;
constexpr uint32_t kQueueDesc = 32;
constexpr uint32_t kQueueDriver = 40;
constexpr uint32_t kQueueDevice = 48;
}  // namespace pci_common

// 4.1.4.8 Legacy Interfaces: A Note on PCI Device Layout (I/O BAR 0).
namespace pci_legacy {
constexpr uint32_t kDeviceFeatures = 0;
constexpr uint32_t kDriverFeatures = 4;
constexpr uint32_t kQueueAddress = 8;  // page frame number, 4096-byte pages
constexpr uint32_t kQueueSize = 12;
constexpr uint32_t kQueueSelect = 14;
constexpr uint32_t kQueueNotify = 16;
constexpr uint32_t kDeviceStatus = 18;
constexpr uint32_t kIsrStatus = 19;
constexpr uint32_t kConfigMsixVector = 20;  // only while MSI-X is enabled
constexpr uint32_t kQueueMsixVector = 22;   // only while MSI-X is enabled
constexpr uint32_t kConfigNoMsix = 20;      // device config starts here without MSI-X
constexpr uint32_t kConfigMsix = 24;        // ... and here with it
}  // namespace pci_legacy

// Shared by both PCI transports: interrupt setup (MSI-X or INTx) and the PCI location.
class PciTransportBase : public Transport {
 public:
  static constexpr unsigned kMaxQueues = 16;

  PciTransportBase(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t device_id);
  uint16_t device_id() const override { return device_id_; }
  ErrorOr<void> setup_interrupts(InterruptSink& sink, uint16_t num_queues) override;
  ErrorOr<void> reapply_config_vector() override;
  uint16_t queue_msix_entry(uint16_t index) const override {
    return index < kMaxQueues ? queue_entry_[index] : kNoVector;
  }
  bool msix_enabled() const { return msix_enabled_; }

 protected:
  // Writes the configuration-change MSI-X entry and returns what the device reads back
  // (kNoVector means it refused, 4.1.5.1.2).
  virtual uint16_t write_config_vector(uint16_t entry) = 0;
  // Test hook / INTx-only devices: pretend MSI-X is on (host tests of the legacy layout).
  void set_msix_enabled_for_test(bool on) { msix_enabled_ = on; }

  uint8_t bus_, dev_, fn_;
  uint16_t device_id_;
  bool msix_enabled_ = false;
  uint16_t config_entry_ = kNoVector;
  uint16_t queue_entry_[kMaxQueues];

 private:
  struct VectorContext {
    InterruptSink* sink;
    uint16_t queue;  // kNoVector: configuration change; kAllQueues: every queue
  };
  static constexpr uint16_t kAllQueues = 0xfffe;
  static constexpr unsigned kMaxVectors = kMaxQueues + 1;
  static void msix_handler(void* ctx);
  VectorContext vector_ctx_[kMaxVectors];
};

class PciModernTransport final : public PciTransportBase {
 public:
  // `device_cfg` may be null (a device without configuration space). `notify` starts at the
  // notify capability's offset; queue q is notified at queue_notify_off(q) * multiplier.
  PciModernTransport(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t device_id,
                     RegisterWindow& common, RegisterWindow& notify, uint32_t notify_multiplier,
                     uint32_t notify_length, RegisterWindow& isr, RegisterWindow* device_cfg);

  TransportKind kind() const override { return TransportKind::PciModern; }
  bool modern() const override { return true; }
  uint64_t device_features() override;
  void set_driver_features(uint64_t features) override;
  uint8_t status() override;
  void set_status(uint8_t status) override;
  ErrorOr<void> reset() override;
  uint32_t config_generation() override;
  uint8_t config_read8(uint32_t offset) override;
  uint16_t config_read16(uint32_t offset) override;
  uint32_t config_read32(uint32_t offset) override;
  void config_write8(uint32_t offset, uint8_t v) override;
  void config_write16(uint32_t offset, uint16_t v) override;
  void config_write32(uint32_t offset, uint32_t v) override;
  uint16_t num_queues() override;
  uint16_t queue_max_size(uint16_t index) override;
  bool queue_size_negotiable() const override { return true; }
  ErrorOr<void> queue_enable(uint16_t index, uint16_t size, uint64_t desc, uint64_t avail,
                             uint64_t used, uint16_t msix_entry) override;
  void notify(uint16_t index) override;
  uint8_t read_isr() override;

 private:
  uint16_t write_config_vector(uint16_t entry) override;
  RegisterWindow& common_;
  RegisterWindow& notify_;
  uint32_t notify_multiplier_;
  uint32_t notify_length_;
  RegisterWindow& isr_;
  RegisterWindow* device_cfg_;
  uint32_t notify_offset_[kMaxQueues] = {};
};

class PciLegacyTransport final : public PciTransportBase {
 public:
  PciLegacyTransport(uint8_t bus, uint8_t dev, uint8_t fn, uint16_t device_id, RegisterWindow& io);

  TransportKind kind() const override { return TransportKind::PciLegacy; }
  bool modern() const override { return false; }
  uint64_t device_features() override;
  void set_driver_features(uint64_t features) override;
  uint8_t status() override;
  void set_status(uint8_t status) override;
  ErrorOr<void> reset() override;
  uint32_t config_generation() override { return 0; }
  uint8_t config_read8(uint32_t offset) override;
  uint16_t config_read16(uint32_t offset) override;
  uint32_t config_read32(uint32_t offset) override;
  void config_write8(uint32_t offset, uint8_t v) override;
  void config_write16(uint32_t offset, uint16_t v) override;
  void config_write32(uint32_t offset, uint32_t v) override;
  uint16_t queue_max_size(uint16_t index) override;
  bool queue_size_negotiable() const override { return false; }
  ErrorOr<void> queue_enable(uint16_t index, uint16_t size, uint64_t desc, uint64_t avail,
                             uint64_t used, uint16_t msix_entry) override;
  void notify(uint16_t index) override;
  uint8_t read_isr() override;
  // Host tests: the legacy layout moves device config by 4 bytes while MSI-X is enabled.
  void test_set_msix(bool on) { set_msix_enabled_for_test(on); }

 private:
  uint16_t write_config_vector(uint16_t entry) override;
  uint32_t config_base() const {
    return msix_enabled_ ? pci_legacy::kConfigMsix : pci_legacy::kConfigNoMsix;
  }
  RegisterWindow& io_;
};

}  // namespace blimp::virtio
