// virtio over MMIO (virtio 1.2, 4.2): version 2 (modern) and version 1 (legacy, 4.2.4) register
// layouts. QEMU's microvm places these at 512-byte slots and tells the kernel where through
// `virtio_mmio.device=SIZE@ADDR:IRQ` on the command line.
#pragma once

#include "drivers/virtio/register_window.h"
#include "drivers/virtio/transport.h"

namespace blimp::virtio {

// 4.2.2 MMIO Device Register Layout (legacy-only registers marked).
namespace mmio_reg {
constexpr uint32_t kMagic = 0x000;  // "virt"
constexpr uint32_t kVersion = 0x004;
constexpr uint32_t kDeviceId = 0x008;
constexpr uint32_t kVendorId = 0x00c;
constexpr uint32_t kDeviceFeatures = 0x010;
constexpr uint32_t kDeviceFeaturesSel = 0x014;
constexpr uint32_t kDriverFeatures = 0x020;
constexpr uint32_t kDriverFeaturesSel = 0x024;
constexpr uint32_t kGuestPageSize = 0x028;  // legacy (4.2.4)
constexpr uint32_t kQueueSel = 0x030;
constexpr uint32_t kQueueNumMax = 0x034;
constexpr uint32_t kQueueNum = 0x038;
constexpr uint32_t kQueueAlign = 0x03c;  // legacy
constexpr uint32_t kQueuePfn = 0x040;    // legacy
constexpr uint32_t kQueueReady = 0x044;
constexpr uint32_t kQueueNotify = 0x050;
constexpr uint32_t kInterruptStatus = 0x060;
constexpr uint32_t kInterruptAck = 0x064;
constexpr uint32_t kStatus = 0x070;
constexpr uint32_t kQueueDescLow = 0x080;
constexpr uint32_t kQueueDriverLow = 0x090;
constexpr uint32_t kQueueDeviceLow = 0x0a0;
constexpr uint32_t kConfigGeneration = 0x0fc;
constexpr uint32_t kConfig = 0x100;
constexpr uint32_t kMagicValue = 0x74726976;  // little-endian "virt"
}  // namespace mmio_reg

class MmioTransport final : public Transport {
 public:
  // `regs` must outlive the transport. `phys_base` is only for messages; `gsi` and its trigger
  // mode come from the command line or ACPI (mmio_discovery.h).
  MmioTransport(RegisterWindow& regs, uint64_t phys_base, uint32_t gsi,
                bool level_triggered = false, bool active_low = false);
  // Checks magic and version and reads the device id. NotFound for an empty slot (device id 0),
  // Unsupported for an unknown version, DeviceError for a bad magic value.
  ErrorOr<void> init();

  uint32_t version() const { return version_; }
  TransportKind kind() const override { return TransportKind::Mmio; }
  bool modern() const override { return version_ == 2; }
  uint16_t device_id() const override { return device_id_; }
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
  uint16_t queue_max_size(uint16_t index) override;
  bool queue_size_negotiable() const override { return true; }
  ErrorOr<void> queue_enable(uint16_t index, uint16_t size, uint64_t desc, uint64_t avail,
                             uint64_t used, uint16_t msix_entry) override;
  void notify(uint16_t index) override;
  uint8_t read_isr() override;
  ErrorOr<void> setup_interrupts(InterruptSink& sink, uint16_t num_queues) override;

 private:
  RegisterWindow& regs_;
  uint64_t phys_base_;
  uint32_t gsi_;
  bool level_triggered_;
  bool active_low_;
  uint32_t version_ = 0;
  uint16_t device_id_ = 0;
  bool irq_ready_ = false;
};

}  // namespace blimp::virtio
