#include "kernel/boot/boot_info.h"

#include "kernel/boot/boot_protocol.h"

namespace blimp {
namespace {

constexpr uint32_t kPvhMagic = 0x336ec578;  // xen/include/public/arch-x86/hvm/start_info.h
constexpr uint32_t kE820Ram = 1;

struct [[gnu::packed]] HvmStartInfo {
  uint32_t magic;
  uint32_t version;
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;
  uint64_t cmdline_paddr;
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;  // version >= 1
  uint32_t memmap_entries;
  uint32_t reserved;
};

struct [[gnu::packed]] HvmMemmapEntry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};

// Multiboot2 specification, section 3.6.
struct [[gnu::packed]] Mb2Tag {
  uint32_t type;
  uint32_t size;
};
constexpr uint32_t kMb2TagEnd = 0, kMb2TagCmdline = 1, kMb2TagMmap = 6, kMb2TagAcpiOld = 14,
                   kMb2TagAcpiNew = 15;

void add_range(BootInfo& out, uint64_t base, uint64_t size) {
  if (size == 0 || out.ram_count == BootInfo::kMaxRanges) return;
  out.ram[out.ram_count++] = {base, size};
}

bool parse_pvh(uint64_t info_phys, BootInfo& out, const char*& error) {
  auto* info = reinterpret_cast<const HvmStartInfo*>(info_phys);
  if (info->magic != kPvhMagic) {
    error = "PVH start_info magic mismatch";
    return false;
  }
  if (info->cmdline_paddr) out.cmdline = reinterpret_cast<const char*>(info->cmdline_paddr);
  out.rsdp = info->rsdp_paddr;
  if (info->version < 1 || info->memmap_paddr == 0) {
    error = "PVH start_info has no memory map (version 0)";
    return false;
  }
  auto* map = reinterpret_cast<const HvmMemmapEntry*>(info->memmap_paddr);
  for (uint32_t i = 0; i < info->memmap_entries; i++) {
    if (map[i].type == kE820Ram) add_range(out, map[i].addr, map[i].size);
  }
  return true;
}

bool parse_multiboot2(uint64_t info_phys, BootInfo& out, const char*& error) {
  uint32_t total = *reinterpret_cast<const uint32_t*>(info_phys);
  uint64_t p = info_phys + 8, end = info_phys + total;
  bool have_map = false;
  while (p + sizeof(Mb2Tag) <= end) {
    auto* tag = reinterpret_cast<const Mb2Tag*>(p);
    if (tag->type == kMb2TagEnd || tag->size < sizeof(Mb2Tag)) break;
    switch (tag->type) {
      case kMb2TagCmdline: out.cmdline = reinterpret_cast<const char*>(p + 8); break;
      case kMb2TagMmap: {
        uint32_t entry_size = *reinterpret_cast<const uint32_t*>(p + 8);
        if (entry_size < 24) break;
        for (uint64_t e = p + 16; e + entry_size <= p + tag->size; e += entry_size) {
          uint64_t base = *reinterpret_cast<const uint64_t*>(e);
          uint64_t len = *reinterpret_cast<const uint64_t*>(e + 8);
          uint32_t type = *reinterpret_cast<const uint32_t*>(e + 16);
          if (type == 1) add_range(out, base, len);
        }
        have_map = true;
        break;
      }
      case kMb2TagAcpiOld:
      case kMb2TagAcpiNew:
        // A copy of the RSDP: point at it; its checksum is still valid.
        if (!out.rsdp || tag->type == kMb2TagAcpiNew) out.rsdp = p + 8;
        break;
    }
    p += (tag->size + 7) & ~7ull;
  }
  if (!have_map) {
    error = "multiboot2 information has no memory map tag";
    return false;
  }
  return true;
}

}  // namespace

uint64_t BootInfo::total_ram() const {
  uint64_t t = 0;
  for (size_t i = 0; i < ram_count; i++) t += ram[i].size;
  return t;
}

uint64_t BootInfo::highest_address() const { return ram_count ? ram[ram_count - 1].end() : 0; }

size_t normalize_ranges(MemoryRange* r, size_t n) {
  // Insertion sort: at most a few dozen entries.
  for (size_t i = 1; i < n; i++) {
    MemoryRange x = r[i];
    size_t j = i;
    while (j > 0 && r[j - 1].base > x.base) {
      r[j] = r[j - 1];
      j--;
    }
    r[j] = x;
  }
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t base = (r[i].base + 4095) & ~4095ull;
    uint64_t end = r[i].end() & ~4095ull;
    if (end <= base) continue;
    if (out > 0 && base <= r[out - 1].end()) {
      if (end > r[out - 1].end()) r[out - 1].size = end - r[out - 1].base;
      continue;
    }
    r[out++] = {base, end - base};
  }
  return out;
}

bool parse_boot_info(int protocol, uint64_t info_phys, BootInfo& out, const char*& error) {
  out.protocol = protocol;
  bool ok;
  if (protocol == BOOT_PROTOCOL_PVH) {
    ok = parse_pvh(info_phys, out, error);
  } else if (protocol == BOOT_PROTOCOL_MULTIBOOT2) {
    ok = parse_multiboot2(info_phys, out, error);
  } else {
    error = "unknown boot protocol (not PVH, not multiboot2)";
    return false;
  }
  if (!out.cmdline) out.cmdline = "";
  // The loader's command line (in the multiboot2 information, or wherever PVH put it) lives in
  // memory the allocator will hand out: keep our own copy.
  size_t i = 0;
  for (; out.cmdline[i] && i + 1 < sizeof out.cmdline_copy; i++)
    out.cmdline_copy[i] = out.cmdline[i];
  out.cmdline_copy[i] = '\0';
  out.cmdline = out.cmdline_copy;
  out.ram_count = normalize_ranges(out.ram, out.ram_count);
  if (ok && out.ram_count == 0) {
    error = "memory map lists no usable RAM";
    ok = false;
  }
  return ok;
}

}  // namespace blimp
