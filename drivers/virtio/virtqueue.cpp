#include "drivers/virtio/virtqueue.h"

#include <cstdarg>

#include "drivers/log.h"
#include "drivers/virtio/virtio.h"
#include "lib/atomic.h"

namespace blimp::virtio {

namespace {

// Shared-ring accesses: single, untorn loads and stores the compiler may not merge or elide.
// Ordering is done with explicit fences at the points the spec asks for (2.7.13, 2.7.7.2).
inline uint16_t load16(const uint16_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
inline uint32_t load32(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
inline void store16(uint16_t* p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

// 2.7.10.1: notify when new_idx has passed `event` since old_idx (the vring_need_event rule).
inline bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return uint16_t(new_idx - event - 1) < uint16_t(new_idx - old_idx);
}

constexpr uint16_t kNone = 0xffff;

size_t round_page(size_t n) { return (n + 4095) & ~size_t(4095); }

}  // namespace

Virtqueue::~Virtqueue() { destroy(); }

ErrorOr<void> Virtqueue::init(uint16_t index, const Options& options, DmaAllocator& dma,
                              NotifyFn notify, void* notify_ctx) {
  uint32_t size = options.size;
  if (size == 0 || size > kMaxSpecQueueSize || (size & (size - 1)) != 0) {
    drivers::log("virtio: queue %u: invalid size %u (must be a power of two, 1..32768)\n", index,
                 size);
    return Error::InvalidArgument;
  }
  if (initialized()) destroy();
  index_ = index;
  size_ = uint16_t(size);
  event_idx_ = options.event_idx;
  max_indirect_ = options.max_indirect > 1 ? options.max_indirect : 0;
  if (max_indirect_ > 1024) max_indirect_ = 1024;
  layout_ = RingLayout::for_size(size_);
  dma_ = &dma;
  notify_ = notify;
  notify_ctx_ = notify_ctx;

  auto ring = dma.alloc(layout_.total);
  if (ring.is_error()) return ring.error();
  ring_ = ring.value();
  auto slots = dma.alloc(round_page(sizeof(Slot) * size_));
  if (slots.is_error()) {
    destroy();
    return slots.error();
  }
  slots_region_ = slots.value();
  slots_ = static_cast<Slot*>(slots_region_.virt);
  if (max_indirect_) {
    auto ind = dma.alloc(round_page(size_t(size_) * max_indirect_ * sizeof(VirtqDesc)));
    if (ind.is_error()) {
      // Indirect descriptors are an optimisation: carry on without them.
      drivers::log("virtio: queue %u: no memory for indirect tables, using direct chains\n", index);
      max_indirect_ = 0;
    } else {
      indirect_ = ind.value();
    }
  }
  reset_ring();
  return {};
}

void Virtqueue::destroy() {
  if (dma_) {
    if (indirect_.virt) dma_->free(indirect_);
    if (slots_region_.virt) dma_->free(slots_region_);
    if (ring_.virt) dma_->free(ring_);
  }
  indirect_ = {};
  slots_region_ = {};
  ring_ = {};
  slots_ = nullptr;
  size_ = 0;
}

void Virtqueue::init_free_list() {
  for (uint16_t i = 0; i < size_; ++i) {
    slots_[i] = Slot{nullptr, 0, 0, uint16_t(i + 1 < size_ ? i + 1 : kNone)};
  }
  free_head_ = 0;
  num_free_ = size_;
}

void Virtqueue::reset_ring() {
  SpinLockGuard guard(lock_);
  __builtin_memset(ring_.virt, 0, layout_.total);
  init_free_list();
  in_flight_ = 0;
  avail_shadow_ = 0;
  kicked_idx_ = 0;
  last_used_ = 0;
  detach_cursor_ = 0;
  broken_ = false;
  interrupts_enabled_ = true;
  // With the event index, ask for an interrupt on the first used buffer (2.7.10).
  if (event_idx_) store16(used_event(), 0);
}

ErrorOr<void> Virtqueue::add(std::span<const Segment> out, std::span<const Segment> in,
                             void* token) {
  size_t n = out.size() + in.size();
  if (!token || n == 0 || n > kMaxSpecQueueSize) return Error::InvalidArgument;
  uint64_t in_len = 0;
  for (const Segment& s : out)
    if (s.len == 0) return Error::InvalidArgument;
  for (const Segment& s : in) {
    if (s.len == 0) return Error::InvalidArgument;
    in_len += s.len;
  }
  if (in_len > 0xffffffffu) return Error::InvalidArgument;

  SpinLockGuard guard(lock_);
  if (broken_) return Error::DeviceError;
  if (!ring_.virt) return Error::InvalidArgument;

  bool indirect = max_indirect_ && n > 1 && n <= max_indirect_;
  uint16_t needed = indirect ? 1 : uint16_t(n);
  if (n > size_ && !indirect) return Error::InvalidArgument;  // can never fit
  if (num_free_ < needed) return Error::Busy;

  uint16_t head = free_head_;
  auto fill = [&](VirtqDesc* table, uint16_t at, const Segment& s, bool writable, bool last,
                  uint16_t next) {
    table[at].addr = s.phys;
    table[at].len = s.len;
    table[at].flags = uint16_t((writable ? desc_flag::kWrite : 0) | (last ? 0 : desc_flag::kNext));
    table[at].next = last ? 0 : next;
  };

  if (indirect) {
    // 2.7.5.3.1: the table's descriptors chain by index inside the table; the ring descriptor
    // carries only VIRTQ_DESC_F_INDIRECT.
    VirtqDesc* table = indirect_table(head);
    uint16_t i = 0;
    for (const Segment& s : out) {
      fill(table, i, s, false, size_t(i) + 1 == n, uint16_t(i + 1));
      ++i;
    }
    for (const Segment& s : in) {
      fill(table, i, s, true, size_t(i) + 1 == n, uint16_t(i + 1));
      ++i;
    }
    free_head_ = slots_[head].next;
    desc()[head].addr = indirect_phys(head);
    desc()[head].len = uint32_t(n * sizeof(VirtqDesc));
    desc()[head].flags = desc_flag::kIndirect;
    desc()[head].next = 0;
    slots_[head].next = kNone;
  } else {
    uint16_t cur = head;
    size_t i = 0;
    auto place = [&](const Segment& s, bool writable) {
      uint16_t next = slots_[cur].next;  // next free descriptor
      bool last = i + 1 == n;
      fill(desc(), cur, s, writable, last, next);
      if (last) {
        free_head_ = next;
        slots_[cur].next = kNone;
      } else {
        cur = next;
      }
      ++i;
    };
    for (const Segment& s : out) place(s, false);
    for (const Segment& s : in) place(s, true);
  }
  slots_[head].token = token;
  slots_[head].in_len = uint32_t(in_len);
  slots_[head].ndesc = needed;
  num_free_ = uint16_t(num_free_ - needed);
  ++in_flight_;

  // 2.7.13: ring entry, then a write barrier, then the index the device polls.
  avail_ring()[avail_shadow_ & (size_ - 1)] = head;
  __atomic_thread_fence(__ATOMIC_RELEASE);
  ++avail_shadow_;
  store16(avail_idx(), avail_shadow_);
  return {};
}

bool Virtqueue::kick() {
  bool notify;
  {
    SpinLockGuard guard(lock_);
    if (broken_ || !ring_.virt) return false;
    uint16_t old_idx = kicked_idx_;
    uint16_t new_idx = avail_shadow_;
    if (old_idx == new_idx) return false;
    kicked_idx_ = new_idx;
    // 2.7.13.4: the idx store must be visible before we read the suppression fields.
    memory_barrier();
    if (event_idx_)
      notify = need_event(load16(avail_event()), new_idx, old_idx);
    else
      notify = !(load16(used_flags()) & kUsedFlagNoNotify);
  }
  if (notify && notify_) notify_(notify_ctx_, index_);
  return notify;
}

bool Virtqueue::notify_again() {
  {
    SpinLockGuard guard(lock_);
    if (broken_ || !ring_.virt) return false;
    kicked_idx_ = avail_shadow_;
  }
  if (!notify_) return false;
  notify_(notify_ctx_, index_);
  return true;
}

bool Virtqueue::has_used() const {
  if (!ring_.virt || broken_) return false;
  return load16(used_idx()) != last_used_;
}

void Virtqueue::broken_locked(const char* fmt, ...) {
  if (broken_) return;
  broken_ = true;
  va_list ap;
  va_start(ap, fmt);
  drivers::vlog(fmt, ap);
  va_end(ap);
}

void Virtqueue::mark_broken(const char* why) {
  SpinLockGuard guard(lock_);
  if (!why) {
    broken_ = true;
    return;
  }
  broken_locked("%s queue %u: %s; queue disabled until device reset\n", name_, index_, why);
}

void Virtqueue::free_chain(uint16_t head) {
  // Walk our shadow links, never the device-visible descriptor table.
  uint16_t n = slots_[head].ndesc;
  uint16_t cur = head;
  for (uint16_t i = 1; i < n; ++i) cur = slots_[cur].next;
  slots_[cur].next = free_head_;
  free_head_ = head;
  num_free_ = uint16_t(num_free_ + n);
  slots_[head].token = nullptr;
  slots_[head].ndesc = 0;
  slots_[head].in_len = 0;
  --in_flight_;
}

ErrorOr<bool> Virtqueue::pop_used(void*& token, uint32_t& len) {
  SpinLockGuard guard(lock_);
  if (broken_) return Error::DeviceError;
  if (!ring_.virt) return false;
  uint16_t idx = load16(used_idx());
  if (idx == last_used_) return false;
  // 2.7.13: read the index before the entries it covers.
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  uint16_t pending = uint16_t(idx - last_used_);
  if (pending > in_flight_) {
    broken_locked(
        "%s queue %u: used idx %u runs %u entries ahead of %u buffers in flight; queue disabled "
        "until device reset\n",
        name_, index_, idx, pending, in_flight_);
    return Error::DeviceError;
  }
  VirtqUsedElem* elem = &used_ring()[last_used_ & (size_ - 1)];
  uint32_t id = load32(&elem->id);
  uint32_t used_len = load32(&elem->len);
  if (id >= size_) {
    broken_locked(
        "%s queue %u: device returned used id %u, out of range (queue size %u); queue disabled "
        "until device reset\n",
        name_, index_, id, size_);
    return Error::DeviceError;
  }
  if (!slots_[id].token) {
    broken_locked(
        "%s queue %u: device returned used id %u, which is not in flight; queue disabled until "
        "device reset\n",
        name_, index_, id);
    return Error::DeviceError;
  }
  if (used_len > slots_[id].in_len) {
    broken_locked(
        "%s queue %u: device wrote %u bytes into buffer id %u, which has only %u writable; queue "
        "disabled until device reset\n",
        name_, index_, used_len, id, slots_[id].in_len);
    return Error::DeviceError;
  }
  token = slots_[id].token;
  len = used_len;
  free_chain(uint16_t(id));
  ++last_used_;
  // 2.7.10: with the event index, ask to be interrupted when the next entry is used.
  if (event_idx_ && interrupts_enabled_) {
    store16(used_event(), last_used_);
  }
  return true;
}

void Virtqueue::disable_interrupts() {
  SpinLockGuard guard(lock_);
  if (!ring_.virt) return;
  interrupts_enabled_ = false;
  if (event_idx_)
    // 2.7.10: an event index just behind us is crossed only after 65535 more completions.
    store16(used_event(), uint16_t(last_used_ - 1));
  else
    store16(avail_flags(), kAvailFlagNoInterrupt);  // 2.7.7
}

bool Virtqueue::enable_interrupts() {
  SpinLockGuard guard(lock_);
  if (!ring_.virt) return true;
  interrupts_enabled_ = true;
  if (event_idx_)
    store16(used_event(), last_used_);
  else
    store16(avail_flags(), 0);
  // 2.7.7.2: make the re-enable visible before checking for buffers used meanwhile.
  memory_barrier();
  return broken_ || load16(used_idx()) == last_used_;
}

void Virtqueue::interrupt() {
  if (broken_ || !ring_.virt) return;
  if (callback_) callback_(*this, callback_ctx_);
}

void* Virtqueue::detach_unused() {
  SpinLockGuard guard(lock_);
  if (!slots_) return nullptr;
  for (; detach_cursor_ < size_; ++detach_cursor_) {
    if (slots_[detach_cursor_].token) {
      void* t = slots_[detach_cursor_].token;
      free_chain(detach_cursor_);
      ++detach_cursor_;
      return t;
    }
  }
  return nullptr;
}

}  // namespace blimp::virtio
