// Memory the device reads and writes (rings, indirect tables, small driver buffers).
// The virtio core never calls the page allocator directly: it asks a DmaAllocator, which the guest
// backs with mm/ (or a static pool before mm/ is up) and the host unit tests back with host memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/error.h"

namespace blimp::virtio {

struct DmaRegion {
  void* virt = nullptr;  // CPU pointer
  uint64_t phys = 0;     // what the device is given (== virt in the guest's identity map)
  size_t size = 0;       // bytes, a multiple of 4096
};

class DmaAllocator {
 public:
  virtual ~DmaAllocator() = default;
  // Zeroed, 4096-byte aligned, physically contiguous memory of at least `size` bytes.
  virtual ErrorOr<DmaRegion> alloc(size_t size) = 0;
  virtual void free(const DmaRegion& region) = 0;
};

#if defined(BLIMP_GUEST)
// The guest's allocator: mm::pages() when it is available, else a fixed pool in .bss.
DmaAllocator& guest_dma();
#endif

}  // namespace blimp::virtio
