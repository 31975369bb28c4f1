// Identity-mapped page tables with 2 MiB pages. entry.S maps the first 4 GiB (the top GiB
// uncached for device windows); map_ram extends the map to RAM above 4 GiB, and map_mmio maps
// device windows that lie above the boot map (64-bit PCI BARs).
#pragma once

#include <cstdint>

namespace blimp::paging {

bool map_ram(uint64_t base, uint64_t size);
bool protect_null_page();

}  // namespace blimp::paging
