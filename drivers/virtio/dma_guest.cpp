// The guest's DmaAllocator: a page pool in .bss (always there, identity mapped, never handed to
// the page allocator), with the page allocator as overflow. Virtqueue rings are allocated at
// device probe time and live as long as the device, so the pool sees few frees.
#include <cstring>

#include "drivers/log.h"
#include "drivers/virtio/dma.h"
#include "kernel/memory.h"
#include "lib/spinlock.h"
#include "mm/mm.h"

namespace blimp::virtio {

namespace {

constexpr size_t kPoolPages = 128;  // 512 KiB: rings and bookkeeping for a handful of devices

class GuestDma final : public DmaAllocator {
 public:
  ErrorOr<DmaRegion> alloc(size_t size) override {
    size_t pages = (size + kPageSize - 1) / kPageSize;
    if (pages == 0) return Error::InvalidArgument;
    {
      SpinLockGuard guard(lock_);
      size_t run = 0;
      for (size_t i = 0; i < kPoolPages; ++i) {
        run = used_[i] ? 0 : run + 1;
        if (run == pages) {
          size_t first = i + 1 - pages;
          for (size_t j = first; j <= i; ++j) used_[j] = true;
          run_len_[first] = uint16_t(pages);
          void* p = pool_[first];
          memset(p, 0, pages * kPageSize);
          return DmaRegion{p, virt_to_phys(p), pages * kPageSize};
        }
      }
    }
    auto r = mm::pages().alloc_run(pages, mm::Owner::Kernel,
                                   mm::AllocFlags(mm::kAllocZero | mm::kAllocNoReclaim));
    if (r.is_error()) {
      drivers::log("virtio: out of DMA memory (%zu pages)\n", pages);
      return Error::NoMemory;
    }
    return DmaRegion{phys_to_virt(r.value()), r.value(), pages * kPageSize};
  }

  void free(const DmaRegion& r) override {
    auto* p = static_cast<uint8_t*>(r.virt);
    auto* base = &pool_[0][0];
    if (p < base || p >= base + sizeof pool_) {
      mm::pages().free_run(r.phys, r.size / kPageSize);
      return;
    }
    SpinLockGuard guard(lock_);
    size_t first = size_t(p - base) / kPageSize;
    size_t n = run_len_[first];
    for (size_t j = first; j < first + n && j < kPoolPages; ++j) used_[j] = false;
    run_len_[first] = 0;
  }

 private:
  SpinLock lock_{LockRank::kDmaPool};
  alignas(4096) uint8_t pool_[kPoolPages][kPageSize];
  bool used_[kPoolPages] = {};
  uint16_t run_len_[kPoolPages] = {};
};

GuestDma g_dma;

}  // namespace

DmaAllocator& guest_dma() { return g_dma; }

}  // namespace blimp::virtio
