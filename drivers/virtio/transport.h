// How the virtio core reaches a device: the operations every transport provides (virtio 1.2, 4:
// virtio-pci modern and legacy, virtio-mmio version 2 and legacy version 1). The device layer
// (device.h) builds feature negotiation, the status handshake, queue setup and interrupt dispatch
// on top of this; device drivers normally use virtio::Device, not the transport.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/error.h"

namespace blimp::virtio {

enum class TransportKind : uint8_t { Mmio, PciModern, PciLegacy };

// Where the transport delivers interrupts. Implemented by virtio::Device.
class InterruptSink {
 public:
  // A shared line (virtio-mmio, PCI INTx): the handler must read and acknowledge the ISR.
  virtual void irq_shared() = 0;
  // MSI-X: the configuration-change vector, and a queue's vector.
  virtual void irq_config() = 0;
  virtual void irq_queue(uint16_t index) = 0;

 protected:
  ~InterruptSink() = default;
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual TransportKind kind() const = 0;
  // Modern (VIRTIO_F_VERSION_1 required) or legacy interface.
  virtual bool modern() const = 0;
  virtual uint16_t device_id() const = 0;
  // Human-readable location, e.g. "mmio 0xfeb00e00" or "pci 00:03.0".
  const char* location() const { return location_; }
  const char* kind_name() const {
    switch (kind()) {
      case TransportKind::Mmio: return "mmio";
      case TransportKind::PciModern: return "pci";
      case TransportKind::PciLegacy: return "pci";
    }
    return "?";
  }

  // Feature bits offered by the device (legacy interfaces: the low 32 only).
  virtual uint64_t device_features() = 0;
  virtual void set_driver_features(uint64_t features) = 0;

  virtual uint8_t status() = 0;
  virtual void set_status(uint8_t status) = 0;
  // Writes 0 to the status and, where the spec asks for it (4.1.4.3.2, 4.2.3.1), waits (bounded)
  // until the device reads back 0. Error::Timeout if it never does.
  virtual ErrorOr<void> reset() = 0;

  // Device configuration space (4.1.4.6, 4.2.2, 4.1.4.8). Offsets relative to its start.
  // Legacy interfaces have no generation counter and return 0.
  virtual uint32_t config_generation() = 0;
  virtual uint8_t config_read8(uint32_t offset) = 0;
  virtual uint16_t config_read16(uint32_t offset) = 0;
  virtual uint32_t config_read32(uint32_t offset) = 0;
  virtual void config_write8(uint32_t offset, uint8_t v) = 0;
  virtual void config_write16(uint32_t offset, uint16_t v) = 0;
  virtual void config_write32(uint32_t offset, uint32_t v) = 0;

  // Number of queues if the transport knows it (modern PCI), else 0.
  virtual uint16_t num_queues() { return 0; }
  // Largest size the device accepts for queue `index`; 0 if the queue does not exist.
  virtual uint16_t queue_max_size(uint16_t index) = 0;
  // False when the driver must use exactly queue_max_size (legacy PCI has no size register).
  virtual bool queue_size_negotiable() const = 0;
  // Whether the ring must use the legacy contiguous layout (always satisfied by Virtqueue).
  // Gives the device the ring addresses and enables the queue. `msix_entry` is the MSI-X table
  // entry the queue should signal (kNoVector for none / not using MSI-X).
  virtual ErrorOr<void> queue_enable(uint16_t index, uint16_t size, uint64_t desc, uint64_t avail,
                                     uint64_t used, uint16_t msix_entry) = 0;
  virtual void notify(uint16_t index) = 0;
  // Reads and acknowledges the interrupt status: kIsrQueue | kIsrConfig bits.
  virtual uint8_t read_isr() = 0;

  // Interrupt delivery (host builds: a no-op; tests call the sink directly). Sets up vectors for
  // the configuration change and `num_queues` queues and records how queue i is signalled:
  // queue_msix_entry(i) is then what queue_enable wants. Called once per device initialisation.
  virtual ErrorOr<void> setup_interrupts(InterruptSink& sink, uint16_t num_queues) = 0;
  // After a device reset the device forgets its MSI-X vector assignments; re-apply the config one.
  virtual ErrorOr<void> reapply_config_vector() { return {}; }
  virtual uint16_t queue_msix_entry(uint16_t index) const;
  // Short description of interrupt delivery for the probe line, e.g. "irq=12" or "msix=3".
  const char* irq_description() const { return irq_desc_; }

 protected:
  char location_[32] = "?";
  char irq_desc_[48] = "none";
};

inline uint16_t Transport::queue_msix_entry(uint16_t) const { return 0xffff; }

}  // namespace blimp::virtio
