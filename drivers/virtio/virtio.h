// Constants from the virtio 1.2 specification (OASIS, "Virtual I/O Device (VIRTIO) Version 1.2").
// Section numbers are given next to each group so a reader can check them against the spec.
#pragma once

#include <cstdint>

namespace blimp::virtio {

// 2.1 Device Status Field.
namespace status {
constexpr uint8_t kAcknowledge = 1;
constexpr uint8_t kDriver = 2;
constexpr uint8_t kDriverOk = 4;
constexpr uint8_t kFeaturesOk = 8;
constexpr uint8_t kDeviceNeedsReset = 64;
constexpr uint8_t kFailed = 128;
}  // namespace status

// 6 Reserved Feature Bits (device-independent), as bit numbers.
namespace feature {
constexpr unsigned kNotifyOnEmpty = 24;  // legacy only (6.3)
constexpr unsigned kAnyLayout = 27;      // legacy only (6.3)
constexpr unsigned kIndirectDesc = 28;   // VIRTIO_F_INDIRECT_DESC (2.7.5.3)
constexpr unsigned kEventIdx = 29;       // VIRTIO_F_EVENT_IDX (2.7.7, 2.7.10)
constexpr unsigned kVersion1 = 32;       // VIRTIO_F_VERSION_1
constexpr unsigned kAccessPlatform = 33;
constexpr unsigned kRingPacked = 34;
constexpr unsigned kInOrder = 35;
constexpr unsigned kOrderPlatform = 36;
constexpr unsigned kSrIov = 37;
constexpr unsigned kNotificationData = 38;
constexpr unsigned kRingReset = 40;

constexpr uint64_t bit(unsigned n) { return uint64_t(1) << n; }
// Transport/ring features this core implements and therefore may accept on a driver's behalf.
constexpr uint64_t kCoreSupported = bit(kIndirectDesc) | bit(kEventIdx) | bit(kVersion1);
// Bits 24..40 (minus a few) are reserved for the transport and ring (6): a device driver asking
// for them is ignored; the core decides.
constexpr uint64_t kTransportMask = ((uint64_t(1) << 41) - 1) & ~((uint64_t(1) << 24) - 1);
}  // namespace feature

// 5 Device Types: device ids.
namespace device_id {
constexpr uint16_t kNet = 1;
constexpr uint16_t kBlock = 2;
constexpr uint16_t kConsole = 3;
constexpr uint16_t kEntropy = 4;
constexpr uint16_t kBalloon = 5;
constexpr uint16_t kScsi = 8;
constexpr uint16_t k9p = 9;
constexpr uint16_t kGpu = 16;
constexpr uint16_t kInput = 18;
constexpr uint16_t kVsock = 19;
constexpr uint16_t kMem = 24;
}  // namespace device_id

const char* device_name(uint16_t id);

// 2.7.5 The Virtqueue Descriptor Table: descriptor flags.
namespace desc_flag {
constexpr uint16_t kNext = 1;
constexpr uint16_t kWrite = 2;
constexpr uint16_t kIndirect = 4;
}  // namespace desc_flag

// 2.7.6 / 2.7.8: ring flags.
constexpr uint16_t kAvailFlagNoInterrupt = 1;  // VIRTQ_AVAIL_F_NO_INTERRUPT
constexpr uint16_t kUsedFlagNoNotify = 1;      // VIRTQ_USED_F_NO_NOTIFY

// 2.7 Split Virtqueues: maximum queue size is 32768.
constexpr uint32_t kMaxSpecQueueSize = 32768;
// Legacy interfaces (2.7.2): the used ring starts at the next 4096-byte boundary.
constexpr uint32_t kLegacyQueueAlign = 4096;

// ISR status bits (4.1.4.5 for PCI, 4.2.2 InterruptStatus for MMIO).
constexpr uint8_t kIsrQueue = 1;
constexpr uint8_t kIsrConfig = 2;

// 4.1.4.3 / 4.1.5.1.2: MSI-X "no vector".
constexpr uint16_t kNoVector = 0xffff;

}  // namespace blimp::virtio
