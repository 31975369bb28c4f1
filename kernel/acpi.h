// The ACPI tables we need: MADT (local APIC and I/O APIC addresses, interrupt overrides), FADT
// (how to power off), MCFG (PCI ECAM). Tables are read, never written.
#pragma once

#include <cstdint>

namespace blimp::acpi {

struct [[gnu::packed]] SdtHeader {
  char signature[4];
  uint32_t length;
  uint8_t revision;
  uint8_t checksum;
  char oem_id[6];
  char oem_table_id[8];
  uint32_t oem_revision;
  uint32_t creator_id;
  uint32_t creator_revision;
};

struct PlatformInfo {
  uint64_t lapic_base = 0xfee00000;
  // I/O APICs (microvm has a second one for virtio-mmio interrupts at GSI 24 and up).
  static constexpr int kMaxIoApics = 4;
  struct IoApic {
    uint64_t base;
    uint32_t gsi_base;
  } ioapics[kMaxIoApics] = {{0xfec00000, 0}};
  int ioapic_count = 1;
  // ISA IRQ -> GSI overrides from the MADT (identity unless overridden).
  uint32_t isa_gsi[16] = {};
  uint16_t isa_flags[16] = {};
  // Power-off: legacy PM1a control port, or the hardware-reduced sleep control register.
  uint16_t pm1a_control_port = 0;
  uint64_t sleep_control_addr = 0;  // system memory address (GAS space 0) or port (space 1)
  uint8_t sleep_control_space = 0;
  bool hardware_reduced = false;
  // The fixed-feature power button (not hardware-reduced): SCI_INT, SMI_CMD and ACPI_ENABLE (to
  // switch to ACPI mode when SCI_EN is clear), PM1a_EVT_BLK (status, then enable at half its
  // length).
  uint16_t sci_irq = 0;
  uint32_t smi_command_port = 0;
  uint8_t acpi_enable_value = 0;
  uint16_t pm1a_event_port = 0;
  uint8_t pm1_event_length = 0;
  uint64_t ecam_base = 0;  // PCI segment 0 ECAM from MCFG, 0 if none
  uint8_t ecam_bus_start = 0, ecam_bus_end = 0;
  bool found = false;
};

// Locates the RSDP (the loader's, else the BIOS areas) and reads the tables.
void init(uint64_t rsdp_hint);
const PlatformInfo& platform();
const SdtHeader* find_table(const char signature[4]);

}  // namespace blimp::acpi
