// The guest's address space: all of RAM and the device windows are identity mapped (virtual ==
// physical) with 2 MiB pages, so a pointer handed to a device is its own guest-physical address.
#pragma once

#include <cstdint>

namespace blimp {

using PhysAddr = uint64_t;

constexpr uint64_t kPageSize = 4096;
constexpr unsigned kPageShift = 12;

inline PhysAddr virt_to_phys(const volatile void* p) { return reinterpret_cast<uint64_t>(p); }
template <typename T = void>
inline T* phys_to_virt(PhysAddr a) {
  return reinterpret_cast<T*>(a);
}

// Makes [base, base+size) accessible (uncached) for device registers, e.g. a PCI BAR above RAM.
// Returns false if the range cannot be mapped.
bool map_mmio(PhysAddr base, uint64_t size);

}  // namespace blimp
