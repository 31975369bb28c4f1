#include "kernel/acpi.h"

#include <cstring>

#include "kernel/console.h"

namespace blimp::acpi {
namespace {

struct [[gnu::packed]] Rsdp {
  char signature[8];  // "RSD PTR "
  uint8_t checksum;
  char oem_id[6];
  uint8_t revision;
  uint32_t rsdt;
  uint32_t length;  // revision >= 2
  uint64_t xsdt;
  uint8_t ext_checksum;
  uint8_t reserved[3];
};

struct [[gnu::packed]] Gas {
  uint8_t space, bit_width, bit_offset, access_size;
  uint64_t address;
};

constinit PlatformInfo g_info;
const SdtHeader* g_tables[32];
int g_table_count = 0;

bool checksum_ok(const void* p, size_t n) {
  uint8_t sum = 0;
  for (size_t i = 0; i < n; i++) sum += static_cast<const uint8_t*>(p)[i];
  return sum == 0;
}

const Rsdp* scan_rsdp(uint64_t start, uint64_t end) {
  for (uint64_t a = start; a + sizeof(Rsdp) <= end; a += 16) {
    auto* r = reinterpret_cast<const Rsdp*>(a);
    if (memcmp(r->signature, "RSD PTR ", 8) == 0 && checksum_ok(r, 20)) return r;
  }
  return nullptr;
}

void parse_madt(const SdtHeader* h) {
  auto* base = reinterpret_cast<const uint8_t*>(h);
  g_info.lapic_base = *reinterpret_cast<const uint32_t*>(base + 36);
  int ioapics = 0;
  for (uint32_t off = 44; off + 2 <= h->length;) {
    uint8_t type = base[off], len = base[off + 1];
    if (len < 2 || off + len > h->length) break;
    const uint8_t* e = base + off;
    if (type == 1 && len >= 12 && ioapics < PlatformInfo::kMaxIoApics) {  // I/O APIC
      g_info.ioapics[ioapics].base = *reinterpret_cast<const uint32_t*>(e + 4);
      g_info.ioapics[ioapics].gsi_base = *reinterpret_cast<const uint32_t*>(e + 8);
      ioapics++;
    } else if (type == 2 && len >= 10) {  // interrupt source override
      uint8_t irq = e[3];
      if (irq < 16) {
        g_info.isa_gsi[irq] = *reinterpret_cast<const uint32_t*>(e + 4);
        g_info.isa_flags[irq] = *reinterpret_cast<const uint16_t*>(e + 8);
      }
    } else if (type == 5 && len >= 12) {  // 64-bit local APIC address override
      g_info.lapic_base = *reinterpret_cast<const uint64_t*>(e + 4);
    }
    off += len;
  }
  if (ioapics) g_info.ioapic_count = ioapics;
}

void parse_fadt(const SdtHeader* h) {
  auto* base = reinterpret_cast<const uint8_t*>(h);
  if (h->length >= 68)
    g_info.pm1a_control_port = uint16_t(*reinterpret_cast<const uint32_t*>(base + 64));
  if (h->length >= 89) {  // ACPI 1.0 FADT fields (ACPI 6.4, table 5.9)
    g_info.sci_irq = *reinterpret_cast<const uint16_t*>(base + 46);
    g_info.smi_command_port = *reinterpret_cast<const uint32_t*>(base + 48);
    g_info.acpi_enable_value = base[52];
    g_info.pm1a_event_port = uint16_t(*reinterpret_cast<const uint32_t*>(base + 56));
    g_info.pm1_event_length = base[88];
  }
  if (h->length >= 116) {
    uint32_t flags = *reinterpret_cast<const uint32_t*>(base + 112);
    g_info.hardware_reduced = flags & (1u << 20);
  }
  if (h->length >= 256) {  // ACPI 5.0: SLEEP_CONTROL_REG at offset 244
    auto* gas = reinterpret_cast<const Gas*>(base + 244);
    g_info.sleep_control_addr = gas->address;
    g_info.sleep_control_space = gas->space;
  }
}

void parse_mcfg(const SdtHeader* h) {
  auto* base = reinterpret_cast<const uint8_t*>(h);
  if (h->length < 44 + 16) return;
  const uint8_t* e = base + 44;
  if (*reinterpret_cast<const uint16_t*>(e + 8) != 0) return;  // segment 0 only
  g_info.ecam_base = *reinterpret_cast<const uint64_t*>(e);
  g_info.ecam_bus_start = e[10];
  g_info.ecam_bus_end = e[11];
}

void add_table(uint64_t addr) {
  if (!addr || g_table_count == 32) return;
  auto* h = reinterpret_cast<const SdtHeader*>(addr);
  if (h->length < sizeof(SdtHeader) || !checksum_ok(h, h->length)) {
    kprintf("acpi: table at %#lx has a bad checksum, ignored\n", addr);
    return;
  }
  g_tables[g_table_count++] = h;
}

}  // namespace

void init(uint64_t rsdp_hint) {
  for (int i = 0; i < 16; i++) g_info.isa_gsi[i] = i;
  const Rsdp* rsdp = nullptr;
  if (rsdp_hint) {
    rsdp = reinterpret_cast<const Rsdp*>(rsdp_hint);
    if (memcmp(rsdp->signature, "RSD PTR ", 8) != 0 || !checksum_ok(rsdp, 20)) rsdp = nullptr;
  }
  if (!rsdp) {
    // The BIOS data area word at 0x40e holds the EBDA segment. Launder the constant address:
    // GCC treats dereferences of small constants as null-pointer bugs.
    uint64_t bda = 0x40e;
    asm("" : "+r"(bda));
    uint64_t ebda = uint64_t(*reinterpret_cast<const volatile uint16_t*>(bda)) << 4;
    if (ebda >= 0x80000 && ebda < 0xa0000) rsdp = scan_rsdp(ebda, ebda + 1024);
    if (!rsdp) rsdp = scan_rsdp(0xe0000, 0x100000);
  }
  if (!rsdp) {
    kprintf("acpi: no RSDP found; using default APIC addresses\n");
    return;
  }
  if (rsdp->revision >= 2 && rsdp->xsdt) {
    auto* xsdt = reinterpret_cast<const SdtHeader*>(rsdp->xsdt);
    size_t n = (xsdt->length - sizeof(SdtHeader)) / 8;
    auto* entries = reinterpret_cast<const uint8_t*>(xsdt) + sizeof(SdtHeader);
    for (size_t i = 0; i < n; i++) {
      uint64_t a;
      memcpy(&a, entries + i * 8, 8);
      add_table(a);
    }
  } else {
    auto* rsdt = reinterpret_cast<const SdtHeader*>(uint64_t(rsdp->rsdt));
    size_t n = (rsdt->length - sizeof(SdtHeader)) / 4;
    auto* entries = reinterpret_cast<const uint32_t*>(reinterpret_cast<const uint8_t*>(rsdt) +
                                                      sizeof(SdtHeader));
    for (size_t i = 0; i < n; i++) add_table(entries[i]);
  }
  g_info.found = true;
  if (auto* madt = find_table("APIC")) parse_madt(madt);
  if (auto* fadt = find_table("FACP")) parse_fadt(fadt);
  if (auto* mcfg = find_table("MCFG")) parse_mcfg(mcfg);
}

const PlatformInfo& platform() { return g_info; }

const SdtHeader* find_table(const char signature[4]) {
  for (int i = 0; i < g_table_count; i++) {
    if (memcmp(g_tables[i]->signature, signature, 4) == 0) return g_tables[i];
  }
  return nullptr;
}

}  // namespace blimp::acpi
