#include "kernel/acpi_madt.h"

#include <cstring>

namespace blimp::acpi {
namespace {

// MADT layout (ACPI 6.4, 5.2.12): the 36-byte SDT header, Local Interrupt Controller Address (4),
// Flags (4), then the interrupt controller structures, each starting with Type (1), Length (1).
constexpr size_t kHeaderSize = 44;
constexpr uint8_t kTypeLocalApic = 0, kTypeLocalX2Apic = 9;
constexpr size_t kLocalApicSize = 8, kLocalX2ApicSize = 16;
constexpr uint32_t kFlagEnabled = 1u << 0;  // Local APIC Flags (5.2.12.2)

template <typename T>
T read_at(const uint8_t* p, size_t off) {
  T v;
  memcpy(&v, p + off, sizeof v);  // MADT entries are not aligned
  return v;
}

}  // namespace

ErrorOr<MadtCpus> parse_madt_cpus(const void* table, size_t size, uint32_t bsp_apic_id,
                                  const char*& why) {
  auto* base = static_cast<const uint8_t*>(table);
  if (!base || size < kHeaderSize) {
    why = "MADT shorter than its 44-byte header";
    return Error::InvalidArgument;
  }
  if (memcmp(base, "APIC", 4) != 0) {
    why = "not a MADT (signature is not APIC)";
    return Error::InvalidArgument;
  }
  const uint32_t length = read_at<uint32_t>(base, 4);
  if (length < kHeaderSize || length > size) {
    why = "MADT length field is shorter than its header or longer than the table";
    return Error::InvalidArgument;
  }

  MadtCpus out;
  bool bsp_seen = false;
  size_t enabled = 0;
  for (size_t off = kHeaderSize; off < length;) {
    if (length - off < 2) {
      why = "MADT ends in the middle of an entry header";
      return Error::InvalidArgument;
    }
    const uint8_t type = base[off], entry_len = base[off + 1];
    if (entry_len < 2) {
      // A zero length would loop forever, a length of 1 would read the next entry's type.
      why = "MADT entry with a length below 2";
      return Error::InvalidArgument;
    }
    if (entry_len > length - off) {
      why = "MADT entry runs past the end of the table";
      return Error::InvalidArgument;
    }
    MadtCpu cpu;
    uint32_t flags = 0;
    bool is_cpu = false;
    if (type == kTypeLocalApic) {
      if (entry_len < kLocalApicSize) {
        why = "Processor Local APIC entry shorter than 8 bytes";
        return Error::InvalidArgument;
      }
      cpu.acpi_uid = base[off + 2];
      cpu.apic_id = base[off + 3];
      flags = read_at<uint32_t>(base, off + 4);
      is_cpu = true;
      if ((flags & kFlagEnabled) && cpu.apic_id == 0xff) {
        why = "Processor Local APIC entry with the broadcast APIC ID 0xff";
        return Error::InvalidArgument;
      }
    } else if (type == kTypeLocalX2Apic) {
      if (entry_len < kLocalX2ApicSize) {
        why = "Processor Local x2APIC entry shorter than 16 bytes";
        return Error::InvalidArgument;
      }
      cpu.apic_id = read_at<uint32_t>(base, off + 4);
      flags = read_at<uint32_t>(base, off + 8);
      cpu.acpi_uid = read_at<uint32_t>(base, off + 12);
      is_cpu = true;
    }
    off += entry_len;
    if (!is_cpu) continue;  // I/O APICs, overrides, NMI sources...: acpi.cpp reads those
    if (!(flags & kFlagEnabled)) {
      out.not_enabled++;
      continue;
    }
    for (size_t i = 0; i < out.count; i++) {
      if (out.cpus[i].apic_id == cpu.apic_id) {
        why = "two enabled MADT processor entries with the same APIC ID";
        return Error::InvalidArgument;
      }
    }
    enabled++;
    if (out.count == MadtCpus::kMax) continue;  // keep counting for the message, store no more
    if (cpu.apic_id == bsp_apic_id) {
      // The bootstrap processor goes first: CPU 0 is the one running this code.
      for (size_t i = out.count; i > 0; i--) out.cpus[i] = out.cpus[i - 1];
      out.cpus[0] = cpu;
      bsp_seen = true;
    } else {
      out.cpus[out.count] = cpu;
    }
    out.count++;
  }
  if (enabled > MadtCpus::kMax) {
    why = "MADT enables more processors than this kernel supports (64)";
    return Error::LimitReached;
  }
  if (enabled == 0) {
    why = "MADT lists no enabled processor";
    return Error::NotFound;
  }
  if (!bsp_seen) {
    why = "MADT does not list the bootstrap processor's APIC ID";
    return Error::NotFound;
  }
  return out;
}

}  // namespace blimp::acpi
