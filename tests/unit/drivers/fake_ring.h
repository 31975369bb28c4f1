// Test doubles: host memory standing in for DMA memory, and the device side of a split virtqueue
// that reads and writes the rings exactly as a virtio device would (virtio 1.2, 2.7).
#pragma once

#include <sys/mman.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "drivers/virtio/dma.h"
#include "drivers/virtio/virtio.h"
#include "drivers/virtio/virtqueue.h"

namespace blimp::virtio::test {

class HostDma : public DmaAllocator {
 public:
  ErrorOr<DmaRegion> alloc(size_t size) override {
    if (fail_next) {
      fail_next = false;
      return Error::NoMemory;
    }
    size = (size + 4095) & ~size_t(4095);
    // Below 2 GiB, like guest RAM: legacy devices take 32-bit page frame numbers.
    void* p =
        mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (p == MAP_FAILED) return Error::NoMemory;
    ++live;
    return DmaRegion{p, reinterpret_cast<uint64_t>(p), size};
  }
  void free(const DmaRegion& r) override {
    munmap(r.virt, r.size);
    --live;
  }
  int live = 0;
  bool fail_next = false;
};

struct Seg {
  uint64_t addr;
  uint32_t len;
  bool write;
};

struct Chain {
  uint16_t head;
  bool indirect = false;
  std::vector<Seg> segs;
  uint32_t writable() const {
    uint32_t n = 0;
    for (auto& s : segs)
      if (s.write) n += s.len;
    return n;
  }
};

// Device side of one split virtqueue in host memory (phys == virt on the host).
class FakeRing {
 public:
  FakeRing(uint64_t desc, uint64_t avail, uint64_t used, uint16_t size, bool event_idx)
      : desc_(reinterpret_cast<VirtqDesc*>(desc)),
        avail_(reinterpret_cast<uint16_t*>(avail)),
        used_(reinterpret_cast<uint8_t*>(used)),
        size_(size),
        event_idx_(event_idx) {}
  explicit FakeRing(const Virtqueue& vq)
      : FakeRing(vq.desc_phys(), vq.avail_phys(), vq.used_phys(), vq.size(), vq.event_idx()) {}

  uint16_t avail_idx() const { return __atomic_load_n(&avail_[1], __ATOMIC_ACQUIRE); }
  uint16_t avail_flags() const { return avail_[0]; }
  uint16_t used_event() const { return avail_[2 + size_]; }
  uint16_t used_idx() const { return *reinterpret_cast<uint16_t*>(used_ + 2); }

  std::optional<Chain> pop_avail() {
    if (avail_idx() == last_avail_) return std::nullopt;
    uint16_t head = avail_[2 + (last_avail_ % size_)];
    ++last_avail_;
    if (event_idx_) set_avail_event(avail_event_policy_ ? *avail_event_policy_ : last_avail_);
    Chain c;
    c.head = head;
    VirtqDesc* table = desc_;
    uint16_t i = head;
    unsigned limit = size_;
    if (desc_[head].flags & desc_flag::kIndirect) {
      c.indirect = true;
      table = reinterpret_cast<VirtqDesc*>(desc_[head].addr);
      limit = desc_[head].len / sizeof(VirtqDesc);
      i = 0;
    }
    for (unsigned n = 0; n < limit; ++n) {
      const VirtqDesc& d = table[i];
      c.segs.push_back({d.addr, d.len, (d.flags & desc_flag::kWrite) != 0});
      if (!(d.flags & desc_flag::kNext)) break;
      i = d.next;
    }
    return c;
  }

  // Writes one used element and publishes it. Returns whether the device would interrupt
  // (2.7.7 / 2.7.10 rules).
  bool push_used(uint32_t id, uint32_t len) {
    uint16_t old_idx = used_idx();
    auto* ring = reinterpret_cast<VirtqUsedElem*>(used_ + 4);
    ring[old_idx % size_] = {id, len};
    uint16_t new_idx = uint16_t(old_idx + 1);
    __atomic_store_n(reinterpret_cast<uint16_t*>(used_ + 2), new_idx, __ATOMIC_RELEASE);
    if (event_idx_) {
      uint16_t ev = used_event();
      return uint16_t(new_idx - ev - 1) < uint16_t(new_idx - old_idx);
    }
    return !(avail_flags() & kAvailFlagNoInterrupt);
  }
  // Moves used->idx without writing entries (a device gone wrong).
  void set_used_idx(uint16_t v) { *reinterpret_cast<uint16_t*>(used_ + 2) = v; }
  void set_no_notify(bool on) { *reinterpret_cast<uint16_t*>(used_) = on ? kUsedFlagNoNotify : 0; }
  void set_avail_event(uint16_t v) {
    *reinterpret_cast<uint16_t*>(used_ + 4 + 8 * size_t(size_)) = v;
  }
  // Pin avail_event to a fixed value instead of "notify me on the next one".
  void pin_avail_event(uint16_t v) {
    avail_event_policy_ = v;
    set_avail_event(v);
  }

 private:
  VirtqDesc* desc_;
  uint16_t* avail_;
  uint8_t* used_;
  uint16_t size_;
  bool event_idx_;
  uint16_t last_avail_ = 0;
  std::optional<uint16_t> avail_event_policy_;
};

}  // namespace blimp::virtio::test
