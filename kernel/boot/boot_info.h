// What the loader told us, normalised across PVH and multiboot2: usable RAM (sorted, merged,
// page-aligned), the command line and the ACPI RSDP.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blimp {

struct MemoryRange {
  uint64_t base = 0;
  uint64_t size = 0;
  uint64_t end() const { return base + size; }
};

struct BootInfo {
  static constexpr size_t kMaxRanges = 64;
  int protocol = 0;  // BOOT_PROTOCOL_*
  MemoryRange ram[kMaxRanges];
  size_t ram_count = 0;
  const char* cmdline = "";  // points into cmdline_copy: the loader's copy may be reused as RAM
  char cmdline_copy[2048] = {};
  uint64_t rsdp = 0;  // 0 when the loader did not say; acpi.cpp then scans the BIOS areas

  uint64_t total_ram() const;
  uint64_t highest_address() const;
};

// Parses the loader's structure. On a protocol we do not understand, returns false and leaves a
// reason in `error` (the caller prints it: the console is up by then).
bool parse_boot_info(int protocol, uint64_t info_phys, BootInfo& out, const char*& error);

// Sorts, drops empty entries, merges adjacent/overlapping ones and trims to whole pages. Exposed
// for the unit tests: firmware maps come unsorted and can end with zero-size entries.
size_t normalize_ranges(MemoryRange* ranges, size_t count);

}  // namespace blimp
