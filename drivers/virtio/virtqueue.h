// A split virtqueue (virtio 1.2, 2.7): descriptor table, available ring and used ring, with
// indirect descriptors (2.7.5.3) and the event index (2.7.7, 2.7.10) when negotiated.
//
// Everything the device writes is treated as untrusted: used ids must be in range and in flight,
// used lengths must fit the device-writable part of the buffer, the used index may not run ahead of
// what was made available. A violation logs one clear message and marks the queue broken; every
// later call fails with Error::DeviceError and no driver memory is touched. After the device is
// reset, detach_unused() hands back the tokens of buffers still in flight so their memory can be
// reclaimed.
//
// Memory layout: one zeroed, 4096-aligned region with the descriptor table at 0, the available
// ring right after it and the used ring on the next 4096 boundary: the legacy layout (2.7.2),
// which modern transports accept as well. The driver's own bookkeeping (tokens, free list) lives
// in a separate region the device is never told about, so a device scribbling on the descriptor
// table cannot redirect our free list.
//
// Concurrency: add/kick run in thread context, pop_used usually from the queue's interrupt
// callback. Each call takes the queue's SpinLock (which masks interrupts in the guest); the
// callback itself runs without the lock, so it may call any method.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "drivers/virtio/dma.h"
#include "lib/error.h"
#include "lib/spinlock.h"

namespace blimp::virtio {

// 2.7.5 The Virtqueue Descriptor Table.
struct VirtqDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(VirtqDesc) == 16);

// 2.7.8 The Virtqueue Used Ring: one element.
struct VirtqUsedElem {
  uint32_t id;
  uint32_t len;
};

// One guest-physical range of a buffer.
struct Segment {
  uint64_t phys;
  uint32_t len;
};

// Byte offsets of the three parts inside the ring region for a queue of `size` entries.
struct RingLayout {
  size_t desc_offset = 0;
  size_t avail_offset;  // 2.7.6: flags, idx, ring[size], used_event
  size_t used_offset;   // 2.7.8: flags, idx, ring[size], avail_event
  size_t total;
  static constexpr RingLayout for_size(uint16_t size) {
    RingLayout l;
    l.avail_offset = size_t(size) * sizeof(VirtqDesc);
    size_t avail_end = l.avail_offset + 6 + 2 * size_t(size);
    l.used_offset = (avail_end + kAlign - 1) & ~(kAlign - 1);
    size_t used_end = l.used_offset + 6 + 8 * size_t(size);
    l.total = (used_end + kAlign - 1) & ~(kAlign - 1);
    return l;
  }
  static constexpr size_t kAlign = 4096;  // 2.7.2 legacy alignment of the used ring
};

class Virtqueue {
 public:
  // The transport's "tell the device queue N has new buffers".
  using NotifyFn = void (*)(void* ctx, uint16_t queue_index);
  // Called (from the interrupt handler in the guest) when the device may have used buffers.
  using Callback = void (*)(Virtqueue& vq, void* ctx);

  struct Options {
    uint16_t size = 0;          // entries; power of two, 1..32768
    bool event_idx = false;     // VIRTIO_F_EVENT_IDX was negotiated
    uint16_t max_indirect = 0;  // >1: VIRTIO_F_INDIRECT_DESC negotiated; per-buffer table size
  };

  Virtqueue() = default;
  Virtqueue(const Virtqueue&) = delete;
  Virtqueue& operator=(const Virtqueue&) = delete;
  ~Virtqueue();

  // Allocates the ring and the bookkeeping. Fails with InvalidArgument for a bad size.
  ErrorOr<void> init(uint16_t index, const Options& options, DmaAllocator& dma, NotifyFn notify,
                     void* notify_ctx);
  // Frees all memory. In-flight tokens are forgotten: call detach_unused() first.
  void destroy();
  bool initialized() const { return ring_.virt != nullptr; }

  uint16_t index() const { return index_; }
  uint16_t size() const { return size_; }
  bool event_idx() const { return event_idx_; }
  uint16_t max_indirect() const { return max_indirect_; }
  uint64_t desc_phys() const { return ring_.phys + layout_.desc_offset; }
  uint64_t avail_phys() const { return ring_.phys + layout_.avail_offset; }
  uint64_t used_phys() const { return ring_.phys + layout_.used_offset; }
  // Free descriptors (a buffer needs one with an indirect table, else one per segment).
  uint16_t num_free() const { return num_free_; }
  uint16_t in_flight() const { return in_flight_; }

  // Prefix for this queue's messages, e.g. "virtio: balloon" (copied; "virtio" by default).
  void set_name(const char* name) {
    size_t i = 0;
    for (; name && name[i] && i + 1 < sizeof name_; ++i) name_[i] = name[i];
    name_[i] = 0;
  }

  void set_callback(Callback cb, void* ctx) {
    callback_ = cb;
    callback_ctx_ = ctx;
  }

  // Makes a buffer available: `out` segments are read by the device, `in` segments written by it
  // (2.7.4: device-readable before device-writable). `token` (non-null) is returned by pop_used.
  // Errors: InvalidArgument (no segments, zero length, null token), Busy (queue full: wait for
  // completions), DeviceError (queue broken).
  ErrorOr<void> add(std::span<const Segment> out, std::span<const Segment> in, void* token);
  ErrorOr<void> add_out(uint64_t phys, uint32_t len, void* token) {
    Segment s{phys, len};
    return add(std::span<const Segment>(&s, 1), {}, token);
  }
  ErrorOr<void> add_in(uint64_t phys, uint32_t len, void* token) {
    Segment s{phys, len};
    return add({}, std::span<const Segment>(&s, 1), token);
  }

  // Notifies the device of buffers added since the last kick, unless the device asked not to be
  // notified (VIRTQ_USED_F_NO_NOTIFY, or avail_event with VIRTIO_F_EVENT_IDX). True if notified.
  bool kick();
  // Notifies the device whatever the suppression fields say (virtio 1.2, 2.7.10 makes them a
  // SHOULD NOT). For a driver that has waited too long: a device restored from a snapshot taken
  // while it polled the queue keeps NO_NOTIFY set in guest memory and polls nothing (QEMU 7.2's
  // free page hint thread), so without this the buffers already posted are never seen.
  bool notify_again();

  // Takes the next used buffer. true: `token`/`len` filled; false: nothing used yet.
  // DeviceError: the device returned a bogus id or length; the queue is now broken.
  ErrorOr<bool> pop_used(void*& token, uint32_t& len);
  // Calls fn(token, len) for every used buffer; returns how many.
  template <typename F>
  ErrorOr<unsigned> drain(F&& fn) {
    unsigned n = 0;
    for (;;) {
      void* token;
      uint32_t len;
      bool got = TRY(pop_used(token, len));
      if (!got) return n;
      fn(token, len);
      ++n;
    }
  }
  bool has_used() const;

  // Interrupt suppression (2.7.7). enable_interrupts() returns false when buffers were used
  // while interrupts were off: drain again, or they may never raise an interrupt.
  void disable_interrupts();
  bool enable_interrupts();

  // Called by the device layer when the device signalled this queue.
  void interrupt();

  bool broken() const { return broken_; }
  // Marks the queue broken (device misbehaved or was reset); logs `why` once (nullptr: silently).
  void mark_broken(const char* why);
  // After the device was reset: returns one in-flight token per call, nullptr when none remain.
  void* detach_unused();
  // After a device reset and detach_unused(): clears the rings so the queue can be set up again.
  void reset_ring();

 private:
  struct Slot {  // per descriptor; token/in_len/ndesc meaningful on chain heads
    void* token;
    uint32_t in_len;
    uint16_t ndesc;
    uint16_t next;  // shadow of desc.next (chain) or free-list link
  };
  VirtqDesc* desc() const { return static_cast<VirtqDesc*>(ring_.virt); }
  uint16_t* avail_flags() const { return ring16(layout_.avail_offset); }
  uint16_t* avail_idx() const { return ring16(layout_.avail_offset + 2); }
  uint16_t* avail_ring() const { return ring16(layout_.avail_offset + 4); }
  uint16_t* used_event() const { return ring16(layout_.avail_offset + 4 + 2 * size_t(size_)); }
  uint16_t* used_flags() const { return ring16(layout_.used_offset); }
  uint16_t* used_idx() const { return ring16(layout_.used_offset + 2); }
  VirtqUsedElem* used_ring() const {
    return reinterpret_cast<VirtqUsedElem*>(static_cast<char*>(ring_.virt) + layout_.used_offset +
                                            4);
  }
  uint16_t* avail_event() const { return ring16(layout_.used_offset + 4 + 8 * size_t(size_)); }
  uint16_t* ring16(size_t off) const {
    return reinterpret_cast<uint16_t*>(static_cast<char*>(ring_.virt) + off);
  }
  VirtqDesc* indirect_table(uint16_t head) const {
    return reinterpret_cast<VirtqDesc*>(static_cast<char*>(indirect_.virt) +
                                        size_t(head) * max_indirect_ * sizeof(VirtqDesc));
  }
  uint64_t indirect_phys(uint16_t head) const {
    return indirect_.phys + uint64_t(head) * max_indirect_ * sizeof(VirtqDesc);
  }
  void free_chain(uint16_t head);
  void init_free_list();
  void broken_locked(const char* fmt, ...) __attribute__((format(printf, 2, 3)));

  SpinLock lock_{LockRank::kVirtqueue};
  char name_[32] = "virtio";
  DmaAllocator* dma_ = nullptr;
  DmaRegion ring_{};
  DmaRegion slots_region_{};
  DmaRegion indirect_{};
  RingLayout layout_{};
  Slot* slots_ = nullptr;
  NotifyFn notify_ = nullptr;
  void* notify_ctx_ = nullptr;
  Callback callback_ = nullptr;
  void* callback_ctx_ = nullptr;
  uint16_t index_ = 0;
  uint16_t size_ = 0;
  uint16_t max_indirect_ = 0;
  bool event_idx_ = false;
  bool interrupts_enabled_ = true;
  bool broken_ = false;
  uint16_t free_head_ = 0;
  uint16_t num_free_ = 0;
  uint16_t in_flight_ = 0;
  uint16_t avail_shadow_ = 0;  // our avail->idx
  uint16_t kicked_idx_ = 0;    // avail->idx at the last kick
  uint16_t last_used_ = 0;     // next used->ring entry we will read
  uint16_t detach_cursor_ = 0;
};

}  // namespace blimp::virtio
