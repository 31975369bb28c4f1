// The processors the ACPI MADT lists (ACPI 6.4, 5.2.12 "Multiple APIC Description Table"):
// Processor Local APIC entries (type 0, 5.2.12.2) and Processor Local x2APIC entries (type 9,
// 5.2.12.12). Pure parsing over a byte range, so that the host unit tests can feed it any table,
// well-formed or not: nothing outside [table, table + size) is ever read.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/error.h"

namespace blimp::acpi {

struct MadtCpu {
  uint32_t apic_id = 0;
  uint32_t acpi_uid = 0;  // the processor's _UID (8 bits in a type 0 entry, 32 in type 9)
};

struct MadtCpus {
  // The most processors this kernel runs on; a table that enables more is rejected rather than
  // cut (which CPUs to leave out is not ours to guess).
  static constexpr size_t kMax = 64;
  MadtCpu cpus[kMax];
  size_t count = 0;  // enabled processors; cpus[0] is the bootstrap processor
  // Listed but not enabled: absent (hot-pluggable slots, QEMU's -smp maxcpus=) or merely
  // "online capable" (ACPI 6.3+): none of them may be started.
  size_t not_enabled = 0;
};

// Reads the enabled processors of the MADT at `table`, of which `size` bytes may be read, and
// puts the one whose APIC ID is `bsp_apic_id` first. Errors, with a sentence in `why`:
//   InvalidArgument: shorter than the MADT header, a length field that disagrees with `size`, a
//     signature that is not "APIC", an entry shorter than 2 bytes, past the end of the table or
//     shorter than its type's structure, two enabled entries with one APIC ID, a type 0 entry
//     with the broadcast ID 0xff;
//   NotFound: no enabled processor, or none with the bootstrap processor's APIC ID;
//   LimitReached: more than MadtCpus::kMax enabled processors.
ErrorOr<MadtCpus> parse_madt_cpus(const void* table, size_t size, uint32_t bsp_apic_id,
                                  const char*& why);

}  // namespace blimp::acpi
