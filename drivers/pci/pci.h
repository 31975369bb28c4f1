// PCI: configuration space through the legacy ports 0xCF8/0xCFC (configuration mechanism #1),
// bus enumeration, capability lists, BARs and MSI-X tables. Guest only.
// (ECAM is not used: every register drivers here need is in the first 256 bytes.)
#pragma once

#include <cstdint>

#include "lib/error.h"

namespace blimp::pci {

struct Address {
  uint8_t bus;
  uint8_t dev;
  uint8_t fn;
};

// PCI Local Bus Spec 3.0, 6.1 configuration header offsets.
namespace reg {
constexpr uint8_t kVendorId = 0x00;
constexpr uint8_t kDeviceId = 0x02;
constexpr uint8_t kCommand = 0x04;
constexpr uint8_t kStatus = 0x06;
constexpr uint8_t kRevision = 0x08;
constexpr uint8_t kClass = 0x09;  // prog-if, subclass, class
constexpr uint8_t kHeaderType = 0x0e;
constexpr uint8_t kBar0 = 0x10;
constexpr uint8_t kSubsystemVendor = 0x2c;
constexpr uint8_t kSubsystemId = 0x2e;
constexpr uint8_t kCapabilities = 0x34;
constexpr uint8_t kInterruptLine = 0x3c;
constexpr uint8_t kInterruptPin = 0x3d;
constexpr uint8_t kSecondaryBus = 0x19;  // type 1 (bridge) header
constexpr uint8_t kIoBase = 0x1c;        // type 1: I/O window, bits 7:4 = address 15:12
constexpr uint8_t kIoLimit = 0x1d;
constexpr uint8_t kMemoryBase = 0x20;  // type 1: memory window, bits 15:4 = address 31:20
constexpr uint8_t kMemoryLimit = 0x22;
constexpr uint8_t kPrefetchBase = 0x24;  // type 1: prefetchable window (left closed)
constexpr uint8_t kPrefetchLimit = 0x26;
}  // namespace reg

namespace command {
constexpr uint16_t kIo = 1 << 0;
constexpr uint16_t kMemory = 1 << 1;
constexpr uint16_t kBusMaster = 1 << 2;
constexpr uint16_t kIntxDisable = 1 << 10;
}  // namespace command

constexpr uint16_t kStatusCapList = 1 << 4;
constexpr uint8_t kCapMsi = 0x05;
constexpr uint8_t kCapVendor = 0x09;
constexpr uint8_t kCapMsix = 0x11;

uint32_t read32(Address a, uint8_t off);
uint16_t read16(Address a, uint8_t off);
uint8_t read8(Address a, uint8_t off);
void write32(Address a, uint8_t off, uint32_t v);
void write16(Address a, uint8_t off, uint16_t v);
void write8(Address a, uint8_t off, uint8_t v);

struct Function {
  Address addr;
  uint16_t vendor;
  uint16_t device;
  uint8_t class_code;
  uint8_t subclass;
  uint8_t prog_if;
  uint8_t revision;
  uint8_t header_type;  // without the multifunction bit
  uint16_t subsystem_vendor;
  uint16_t subsystem_id;
};

// Calls fn for every function on every bus reachable from bus 0 (through PCI-PCI bridges).
void enumerate(void (*fn)(const Function& f, void* ctx), void* ctx);

// Offset of the first capability with `id` after `after` (0: from the start); 0 if none.
uint8_t find_capability(Address a, uint8_t id, uint8_t after = 0);

struct Bar {
  uint64_t base = 0;  // bus address (== guest physical address) or I/O port
  uint64_t size = 0;
  bool io = false;
  bool is64 = false;
  bool prefetchable = false;
};
// Decodes (and sizes) BAR `index`, 0..5. NotFound for an unimplemented BAR, InvalidArgument for
// the upper half of a 64-bit BAR.
ErrorOr<Bar> read_bar(Address a, unsigned index);

void set_command_bits(Address a, uint16_t set, uint16_t clear = 0);

// Gives addresses to BARs the firmware left unassigned (qboot assigns none): memory BARs from
// the 32-bit PCI hole above 3 GiB (skipping the ECAM window), I/O BARs from 0xc000 up. Behind a
// bridge whose windows the firmware left closed, enumerate() opens windows around what the
// bridge's secondary bus was given.
void assign_unassigned_bars(Address a);

// The GSI a function's INTx pin reaches the I/O APIC on, and whether it is active low.
// Uses the firmware's interrupt line when there is one, else the chipset's routing: on QEMU's
// q35 (ICH9) slot s pin p is PIRQ (s + p) % 4 + 4, wired to GSI 16 + PIRQ; on i440FX/PIIX3 (checked
// first: qboot writes interrupt lines that disagree with the chipset) it is PIRQ (s - 1 + p) % 4,
// routed to an ISA IRQ by PIIX3 registers 0x60-0x63 (programmed here if the firmware did not).
struct IntxRoute {
  unsigned gsi;
  bool active_low;
};
ErrorOr<IntxRoute> route_intx(Address a);

// MSI-X (PCI Local Bus Spec 3.0, 6.8.2): table in a memory BAR, one 16-byte entry per vector.
class Msix {
 public:
  // Finds the capability and maps the table. NotFound without MSI-X.
  ErrorOr<void> init(Address a);
  bool present() const { return cap_ != 0; }
  uint16_t table_size() const { return table_size_; }
  // Programs entry `i` (unmasked) to deliver `vector` to this CPU.
  void set_entry(uint16_t i, uint8_t vector);
  // Enables MSI-X for the function (and disables INTx).
  void enable();
  bool enabled() const;

 private:
  Address addr_{};
  uint8_t cap_ = 0;
  uint16_t table_size_ = 0;
  uint64_t table_ = 0;
};

}  // namespace blimp::pci
