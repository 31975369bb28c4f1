#include "drivers/pci/pci.h"

#include "drivers/log.h"
#include "kernel/acpi.h"
#include "kernel/arch/io.h"
#include "kernel/interrupts.h"
#include "kernel/memory.h"
#include "lib/irq.h"

namespace blimp::pci {

namespace {
constexpr uint16_t kConfigAddress = 0xcf8;
constexpr uint16_t kConfigData = 0xcfc;

// Configuration mechanism #1: enable bit, bus, device, function, dword-aligned register.
uint32_t config_address(Address a, uint8_t off) {
  return 0x80000000u | (uint32_t(a.bus) << 16) | (uint32_t(a.dev & 31) << 11) |
         (uint32_t(a.fn & 7) << 8) | (off & 0xfc);
}
}  // namespace

uint32_t read32(Address a, uint8_t off) {
  IrqGuard guard;  // the address/data pair must not be interleaved
  arch::outl(kConfigAddress, config_address(a, off));
  return arch::inl(kConfigData);
}
uint16_t read16(Address a, uint8_t off) {
  IrqGuard guard;
  arch::outl(kConfigAddress, config_address(a, off));
  return arch::inw(uint16_t(kConfigData + (off & 2)));
}
uint8_t read8(Address a, uint8_t off) {
  IrqGuard guard;
  arch::outl(kConfigAddress, config_address(a, off));
  return arch::inb(uint16_t(kConfigData + (off & 3)));
}
void write32(Address a, uint8_t off, uint32_t v) {
  IrqGuard guard;
  arch::outl(kConfigAddress, config_address(a, off));
  arch::outl(kConfigData, v);
}
void write16(Address a, uint8_t off, uint16_t v) {
  IrqGuard guard;
  arch::outl(kConfigAddress, config_address(a, off));
  arch::outw(uint16_t(kConfigData + (off & 2)), v);
}
void write8(Address a, uint8_t off, uint8_t v) {
  IrqGuard guard;
  arch::outl(kConfigAddress, config_address(a, off));
  arch::outb(uint16_t(kConfigData + (off & 3)), v);
}

namespace {

// Where assign_unassigned_bars() and the bridge windows take addresses from, in order.
uint64_t g_mmio_next;
uint64_t g_mmio_limit = 0xfec00000;  // the I/O APIC and friends live above
uint32_t g_io_next = 0xc000;

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

void init_bar_space() {
  if (g_mmio_next) return;
  g_mmio_next = 0xc0000000;
  const auto& p = acpi::platform();
  if (p.ecam_base) {
    uint64_t ecam_end = p.ecam_base + (uint64_t(p.ecam_bus_end) + 1 - p.ecam_bus_start) * (1 << 20);
    if (ecam_end > g_mmio_next && p.ecam_base < g_mmio_limit) g_mmio_next = ecam_end;
  }
}

// A bridge forwards only the address windows programmed into it. Firmware that enumerates the
// bus (SeaBIOS, OVMF) programs them; qboot leaves them closed (base above limit), so devices
// behind a bridge, such as a PCIe root port where libvirt puts devices on q35, got BARs nothing
// forwarded to. Windows are 1 MiB (memory) and 4 KiB (I/O) granular (PCI-to-PCI bridge spec 3.2.5).
constexpr uint64_t kMemoryWindowAlign = 1 << 20;
constexpr uint32_t kIoWindowAlign = 1 << 12;

// The bridge each secondary bus hangs off (bus 0 has none), recorded by enumerate() so that
// route_intx() can follow a device's interrupt pin up to the root bus.
struct Parent {
  bool valid;
  Address bridge;
};
Parent g_parent[256];

struct BridgeWindows {
  bool open_memory = false, open_io = false;
  uint64_t memory_start = 0;
  uint32_t io_start = 0;
};

BridgeWindows begin_bridge(Address b) {
  BridgeWindows w;
  init_bar_space();
  uint16_t mem_base = read16(b, reg::kMemoryBase), mem_limit = read16(b, reg::kMemoryLimit);
  uint8_t io_base = read8(b, reg::kIoBase), io_limit = read8(b, reg::kIoLimit);
  w.open_memory = (mem_base & 0xfff0) > (mem_limit & 0xfff0);
  w.open_io = (io_base & 0xf0) > (io_limit & 0xf0);
  if (w.open_memory) w.memory_start = g_mmio_next = align_up(g_mmio_next, kMemoryWindowAlign);
  if (w.open_io) w.io_start = g_io_next = uint32_t(align_up(g_io_next, kIoWindowAlign));
  return w;
}

// After the secondary bus was enumerated (and its BARs assigned from the space above): open the
// closed windows around what it took, and let the bridge forward memory, I/O and bus mastering.
void end_bridge(Address b, const BridgeWindows& w) {
  uint16_t enable = 0;
  if (w.open_memory && g_mmio_next > w.memory_start) {
    uint64_t end = align_up(g_mmio_next, kMemoryWindowAlign);
    write16(b, reg::kMemoryBase, uint16_t((w.memory_start >> 16) & 0xfff0));
    write16(b, reg::kMemoryLimit, uint16_t(((end - 1) >> 16) & 0xfff0));
    g_mmio_next = end;
    enable |= command::kMemory;
  }
  if (w.open_io && g_io_next > w.io_start) {
    uint32_t end = uint32_t(align_up(g_io_next, kIoWindowAlign));
    write8(b, reg::kIoBase, uint8_t((w.io_start >> 8) & 0xf0));
    write8(b, reg::kIoLimit, uint8_t(((end - 1) >> 8) & 0xf0));
    g_io_next = end;
    enable |= command::kIo;
  }
  if (enable) {
    drivers::log(
        "pci %02x:%02x.%x: bridge windows opened by the kernel (firmware left them closed)\n",
        b.bus, b.dev, b.fn);
    set_command_bits(b, uint16_t(enable | command::kBusMaster));
  }
}

void scan_bus(uint8_t bus, void (*fn)(const Function&, void*), void* ctx, int depth) {
  for (uint8_t dev = 0; dev < 32; ++dev) {
    Address a{bus, dev, 0};
    if (read16(a, reg::kVendorId) == 0xffff) continue;
    bool multi = read8(a, reg::kHeaderType) & 0x80;
    for (uint8_t fn_no = 0; fn_no < (multi ? 8 : 1); ++fn_no) {
      Address f{bus, dev, fn_no};
      uint16_t vendor = read16(f, reg::kVendorId);
      if (vendor == 0xffff) continue;
      uint32_t cls = read32(f, reg::kRevision);
      Function info{};
      info.addr = f;
      info.vendor = vendor;
      info.device = read16(f, reg::kDeviceId);
      info.revision = uint8_t(cls);
      info.prog_if = uint8_t(cls >> 8);
      info.subclass = uint8_t(cls >> 16);
      info.class_code = uint8_t(cls >> 24);
      info.header_type = read8(f, reg::kHeaderType) & 0x7f;
      if (info.header_type == 0) {
        info.subsystem_vendor = read16(f, reg::kSubsystemVendor);
        info.subsystem_id = read16(f, reg::kSubsystemId);
      }
      fn(info, ctx);
      // PCI-to-PCI bridge: scan the secondary bus the firmware assigned.
      if (info.header_type == 1 && depth < 8) {
        uint8_t secondary = read8(f, reg::kSecondaryBus);
        if (secondary > bus) {
          g_parent[secondary] = Parent{true, f};
          BridgeWindows w = begin_bridge(f);
          scan_bus(secondary, fn, ctx, depth + 1);
          end_bridge(f, w);
        }
      }
    }
  }
}

}  // namespace

void enumerate(void (*fn)(const Function&, void*), void* ctx) { scan_bus(0, fn, ctx, 0); }

uint8_t find_capability(Address a, uint8_t id, uint8_t after) {
  if (!(read16(a, reg::kStatus) & kStatusCapList)) return 0;
  uint8_t off = after ? read8(a, uint8_t(after + 1)) : read8(a, reg::kCapabilities);
  for (int guard = 0; off >= 0x40 && guard < 48; ++guard) {  // bounded: no cycles
    off &= 0xfc;
    if (read8(a, off) == id) return off;
    off = read8(a, uint8_t(off + 1));
  }
  return 0;
}

void set_command_bits(Address a, uint16_t set, uint16_t clear) {
  uint16_t cmd = read16(a, reg::kCommand);
  write16(a, reg::kCommand, uint16_t((cmd | set) & ~clear));
}

ErrorOr<Bar> read_bar(Address a, unsigned index) {
  if (index > 5) return Error::InvalidArgument;
  uint8_t off = uint8_t(reg::kBar0 + 4 * index);
  uint32_t lo = read32(a, off);
  Bar bar;
  // Size it with decoding off, so the probe value never decodes as an address (6.2.5.1).
  uint16_t cmd = read16(a, reg::kCommand);
  write16(a, reg::kCommand, uint16_t(cmd & ~(command::kIo | command::kMemory)));
  if (lo & 1) {
    bar.io = true;
    write32(a, off, 0xffffffffu);
    uint32_t mask = read32(a, off) & ~3u;
    write32(a, off, lo);
    bar.base = lo & ~3u;
    bar.size = mask ? (~mask + 1) & 0xffff : 0;
  } else {
    unsigned type = (lo >> 1) & 3;
    bar.prefetchable = lo & 8;
    bar.is64 = type == 2;
    uint32_t hi = 0;
    write32(a, off, 0xffffffffu);
    uint64_t mask = read32(a, off) & ~0xfu;
    write32(a, off, lo);
    if (bar.is64 && index < 5) {
      hi = read32(a, uint8_t(off + 4));
      write32(a, uint8_t(off + 4), 0xffffffffu);
      mask |= uint64_t(read32(a, uint8_t(off + 4))) << 32;
      write32(a, uint8_t(off + 4), hi);
    } else {
      mask |= 0xffffffff00000000ull;
    }
    bar.base = (uint64_t(hi) << 32) | (lo & ~0xfu);
    bar.size = mask ? ~mask + 1 : 0;
    if (mask == 0xffffffff00000000ull) bar.size = 0;
  }
  write16(a, reg::kCommand, cmd);
  if (bar.size == 0) return Error::NotFound;
  return bar;
}

void assign_unassigned_bars(Address a) {
  init_bar_space();
  for (unsigned i = 0; i < 6; ++i) {
    auto r = read_bar(a, i);
    if (r.is_error()) continue;
    Bar bar = r.value();
    uint8_t off = uint8_t(reg::kBar0 + 4 * i);
    if (bar.base == 0) {
      if (bar.io) {
        uint32_t base = uint32_t(align_up(g_io_next, bar.size < 4 ? 4 : bar.size));
        if (base + bar.size <= 0x10000) {
          write32(a, off, base);
          g_io_next = uint32_t(base + bar.size);
        }
      } else {
        uint64_t size = bar.size < 4096 ? 4096 : bar.size;
        uint64_t base = align_up(g_mmio_next, size);
        if (base + size <= g_mmio_limit) {
          write32(a, off, uint32_t(base));
          if (bar.is64) write32(a, uint8_t(off + 4), 0);
          g_mmio_next = base + size;
        } else {
          drivers::log("pci %02x:%02x.%x: no room for BAR %u (%#llx bytes)\n", a.bus, a.dev, a.fn,
                       i, static_cast<unsigned long long>(bar.size));
        }
      }
    }
    if (bar.is64) ++i;  // the upper half is not a BAR of its own
  }
}

ErrorOr<IntxRoute> route_intx(Address dev_addr) {
  uint8_t pin = read8(dev_addr, reg::kInterruptPin);
  if (pin < 1 || pin > 4) return Error::NotFound;
  // Behind bridges, INTx is swizzled at each one by the device number on its secondary bus
  // (PCI-to-PCI bridge spec 9.1): continue with the root-bus slot and pin it arrives on.
  Address a = dev_addr;
  for (int hops = 0; a.bus != 0 && g_parent[a.bus].valid && hops < 8; ++hops) {
    pin = uint8_t((pin - 1 + a.dev) % 4 + 1);
    a = g_parent[a.bus].bridge;
  }
  uint16_t host = read16(Address{0, 0, 0}, reg::kDeviceId);
  uint16_t host_vendor = read16(Address{0, 0, 0}, reg::kVendorId);
  if (host_vendor == 0x8086 && host == 0x29c0 && a.bus == 0 && a.dev < 25) {
    // q35: QEMU's ICH9 default routing (hw/isa/lpc_ich9.c), PIRQ E-H for ordinary slots.
    unsigned pirq = (a.dev + pin - 1) % 4 + 4;
    return IntxRoute{16 + pirq, false};
  }
  if (host_vendor == 0x8086 && host == 0x1237 && a.bus == 0) {
    // i440FX + PIIX3 at 00:01.0: PIRQ route control registers 0x60-0x63 (PIIX3 datasheet 2.2.15).
    // The chipset's routing is the truth: qboot writes interrupt lines that disagree with it.
    Address piix{0, 1, 0};
    unsigned pirq = (a.dev + 3 + pin - 1) % 4;  // (slot - 1 + pin - 1) mod 4
    uint8_t route = read8(piix, uint8_t(0x60 + pirq));
    if (route & 0x80) {
      static constexpr uint8_t kIrqs[4] = {10, 10, 11, 11};  // SeaBIOS's choice
      route = kIrqs[pirq];
      write8(piix, uint8_t(0x60 + pirq), route);
    }
    route &= 0x0f;
    write8(dev_addr, reg::kInterruptLine, route);
    const auto& p = acpi::platform();
    return IntxRoute{p.isa_gsi[route], false};
  }
  uint8_t line = read8(dev_addr, reg::kInterruptLine);
  if (line != 0 && line < 16) {
    const auto& p = acpi::platform();
    return IntxRoute{p.isa_gsi[line], false};
  }
  return Error::NotFound;
}

ErrorOr<void> Msix::init(Address a) {
  addr_ = a;
  cap_ = find_capability(a, kCapMsix);
  if (!cap_) return Error::NotFound;
  uint16_t ctrl = read16(a, uint8_t(cap_ + 2));
  table_size_ = uint16_t((ctrl & 0x7ff) + 1);
  uint32_t table = read32(a, uint8_t(cap_ + 4));
  unsigned bir = table & 7;
  auto bar = read_bar(a, bir);
  if (bar.is_error() || bar.value().io || bar.value().base == 0) {
    drivers::log("pci %02x:%02x.%x: MSI-X table in unusable BAR %u\n", a.bus, a.dev, a.fn, bir);
    cap_ = 0;
    return Error::DeviceError;
  }
  uint64_t offset = table & ~7u;
  if (offset + 16ull * table_size_ > bar.value().size) {
    drivers::log("pci %02x:%02x.%x: MSI-X table outside its BAR\n", a.bus, a.dev, a.fn);
    cap_ = 0;
    return Error::DeviceError;
  }
  table_ = bar.value().base + offset;
  if (!map_mmio(table_ & ~0xfffull,
                ((16ull * table_size_ + (table_ & 0xfff)) + 0xfff) & ~0xfffull)) {
    cap_ = 0;
    return Error::NoMemory;
  }
  set_command_bits(a, command::kMemory);
  return {};
}

void Msix::set_entry(uint16_t i, uint8_t vector) {
  if (i >= table_size_) return;
  auto msg = interrupts::msi_message(vector);
  uint64_t e = table_ + 16ull * i;
  arch::mmio_write<uint32_t>(e + 12, 1);  // mask while changing
  arch::mmio_write<uint32_t>(e + 0, uint32_t(msg.address));
  arch::mmio_write<uint32_t>(e + 4, uint32_t(msg.address >> 32));
  arch::mmio_write<uint32_t>(e + 8, msg.data);
  arch::mmio_write<uint32_t>(e + 12, 0);
}

void Msix::enable() {
  if (!cap_) return;
  uint16_t ctrl = read16(addr_, uint8_t(cap_ + 2));
  ctrl = uint16_t((ctrl | 0x8000) & ~0x4000);  // enable, no function mask
  write16(addr_, uint8_t(cap_ + 2), ctrl);
  set_command_bits(addr_, command::kIntxDisable | command::kBusMaster);
}

bool Msix::enabled() const { return cap_ && (read16(addr_, uint8_t(cap_ + 2)) & 0x8000); }

}  // namespace blimp::pci
