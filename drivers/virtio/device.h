// A virtio device as its driver sees it: feature negotiation, the status handshake (virtio 1.2,
// 3.1.1), virtqueue setup, configuration space reads checked against the generation counter
// (2.5.1 / 4.1.4.3.1), interrupt dispatch to per-queue callbacks, device-reset detection, and a
// registry of drivers by device id.
//
// A driver's probe, in order (see docs/virtio.md for a fuller example):
//
//   ErrorOr<void> probe(virtio::Device& dev) {
//     TRY(dev.negotiate(bit(VIRTIO_BALLOON_F_STATS_VQ) | ...));   // reset, ACK, DRIVER,
//     FEATURES_OK auto* inflate = TRY(dev.add_queue(0, on_inflate_done, this));
//     ...                                                          // more add_queue
//     dev.set_config_callback(on_config_change, this);
//     TRY(dev.start());                                            // interrupts, queues, DRIVER_OK
//     uint32_t target = dev.config_read<uint32_t>(0);
//     ...
//   }
//
// Interrupt context: queue callbacks, the config callback and the error callback run from the
// device's interrupt handler (interrupts masked). Keep them short: drain the queue, record what
// changed, wake the worker.
#pragma once

#include <cstdint>
#include <type_traits>

#include "drivers/virtio/dma.h"
#include "drivers/virtio/transport.h"
#include "drivers/virtio/virtio.h"
#include "drivers/virtio/virtqueue.h"
#include "lib/error.h"

namespace blimp::virtio {

struct QueueOptions {
  // Upper bound on the ring size; the device's maximum wins if smaller. Legacy PCI devices fix
  // the size themselves; a device size above kMaxQueueSize is rejected.
  uint16_t max_size = 256;
  // Descriptors per indirect table when VIRTIO_F_INDIRECT_DESC was negotiated (0: never indirect).
  uint16_t max_indirect = 0;
};

class Device final : public InterruptSink {
 public:
  static constexpr unsigned kMaxQueues = 8;
  static constexpr uint16_t kMaxQueueSize = 1024;

  using ConfigCallback = void (*)(Device& dev, void* ctx);
  // The device reset itself or asked for a reset (status 0 or DEVICE_NEEDS_RESET); every queue
  // is already marked broken. The driver may call recover() (from thread context).
  using ErrorCallback = void (*)(Device& dev, void* ctx);

  Device(Transport& transport, DmaAllocator& dma) : transport_(transport), dma_(dma) {}
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device();

  Transport& transport() { return transport_; }
  uint16_t id() const { return transport_.device_id(); }
  const char* name() const { return device_name(id()); }

  // Steps 1-5 of 3.1.1: reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK.
  // `wanted` are device-specific bits the driver understands (bits 0-23 and 41+); the core adds
  // the ring/transport bits it implements (INDIRECT_DESC, EVENT_IDX, VERSION_1) if offered.
  // A modern transport whose device does not offer VERSION_1 is refused. Returns the negotiated
  // set. On failure the device is left with FAILED set.
  ErrorOr<uint64_t> negotiate(uint64_t wanted);
  uint64_t features() const { return features_; }
  bool has_feature(unsigned bit) const { return (features_ >> bit) & 1; }

  // Allocates queue `index` (after negotiate, before start). The device's maximum size is read
  // and validated here: 0 means the queue does not exist (NotFound); a size that is not a power of
  // two (modern: we pick a power of two below it; legacy PCI: refused) or is larger than
  // kMaxQueueSize on legacy PCI is refused with DeviceError.
  ErrorOr<Virtqueue*> add_queue(uint16_t index, Virtqueue::Callback cb, void* ctx,
                                const QueueOptions& options = {});
  Virtqueue* queue(uint16_t index);
  unsigned num_queues() const { return num_queues_; }

  void set_config_callback(ConfigCallback cb, void* ctx) {
    config_cb_ = cb;
    config_ctx_ = ctx;
  }
  void set_error_callback(ErrorCallback cb, void* ctx) {
    error_cb_ = cb;
    error_ctx_ = ctx;
  }

  // Interrupts, queue addresses and DRIVER_OK (steps 7-8 of 3.1.1).
  ErrorOr<void> start();
  bool started() const { return started_; }

  // Configuration space, read consistently: retried while the generation counter moves (2.5.1);
  // on legacy interfaces (no counter) read twice until two reads agree (4.1.4.8 advice).
  template <typename T>
  T config_read(uint32_t offset) {
    static_assert(std::is_integral_v<T> &&
                  (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8));
    return T(config_read_raw(offset, sizeof(T)));
  }
  template <typename T>
  void config_write(uint32_t offset, T v) {
    static_assert(std::is_integral_v<T>);
    config_write_raw(offset, sizeof(T), uint64_t(v));
  }

  // Health check: DeviceError (logged once) when the device reads status 0 or DEVICE_NEEDS_RESET
  // after start; the queues are then broken and the error callback has run.
  ErrorOr<void> check_alive();
  bool failed() const { return dead_; }
  // Sets FAILED (3.1.1 step 8 alternative) and logs why.
  void fail(const char* why);
  // Resets the device (all queues stop; in-flight buffers can be taken back with
  // Virtqueue::detach_unused), e.g. before handing memory back or on shutdown.
  ErrorOr<void> reset();
  // After reset() or a device-initiated reset: hands every in-flight token of queue i to
  // `reclaim`, then redoes the handshake with the same features and queues. Thread context only.
  ErrorOr<void> recover(void (*reclaim)(uint16_t queue, void* token, void* ctx), void* ctx);

  // InterruptSink (called from the transport's interrupt handlers).
  void irq_shared() override;
  void irq_config() override;
  void irq_queue(uint16_t index) override;

  // "features=0x... queues=N (sizes a/b/c) irq=..." for the probe line.
  void describe(char* buf, unsigned long size) const;

 private:
  struct QueueSlot {
    bool used = false;
    Virtqueue vq;
  };
  uint64_t config_read_raw(uint32_t offset, unsigned width);
  void config_write_raw(uint32_t offset, unsigned width, uint64_t v);
  uint64_t config_read_once(uint32_t offset, unsigned width);
  ErrorOr<void> enable_queues();
  void device_lost(const char* why);
  static void notify_trampoline(void* ctx, uint16_t index);

  Transport& transport_;
  DmaAllocator& dma_;
  uint64_t features_ = 0;
  QueueSlot queues_[kMaxQueues];
  unsigned num_queues_ = 0;  // highest index + 1
  ConfigCallback config_cb_ = nullptr;
  void* config_ctx_ = nullptr;
  ErrorCallback error_cb_ = nullptr;
  void* error_ctx_ = nullptr;
  bool negotiated_ = false;
  bool started_ = false;
  bool dead_ = false;
  bool interrupts_ready_ = false;
};

// A device driver, registered by device id. probe() gets a device fresh from the transport (not
// yet reset); returning an error leaves the device FAILED and unbound.
struct Driver {
  const char* name;
  uint16_t device_id;
  ErrorOr<void> (*probe)(Device& dev);
};

// Registers a driver; a later registration for the same id replaces an earlier one (so the real
// balloon driver can take over from the probe-only one). Up to 16 drivers.
ErrorOr<void> register_driver(const Driver& driver);
const Driver* find_driver(uint16_t device_id);

}  // namespace blimp::virtio
