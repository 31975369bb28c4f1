#include "drivers/drivers.h"

#include <new>

#include "drivers/log.h"
#include "drivers/pci/bar_window.h"
#include "drivers/pci/pci.h"
#include "drivers/power_button.h"
#include "drivers/virtio/mmio_discovery.h"
#include "drivers/virtio/mmio_transport.h"
#include "drivers/virtio/pci_transport.h"
#include "drivers/virtio/probe_driver.h"
#include "kernel/acpi.h"
#include "kernel/cmdline.h"
#include "kernel/memory.h"

namespace blimp::drivers {

namespace {

using virtio::Device;

// Transports and devices live for the whole run: carve them out of a static arena.
alignas(64) uint8_t g_arena[48 * 1024];
size_t g_arena_used;

template <typename T, typename... Args>
T* make(Args&&... args) {
  size_t at = (g_arena_used + alignof(T) - 1) & ~(alignof(T) - 1);
  if (at + sizeof(T) > sizeof g_arena) return nullptr;
  g_arena_used = at + sizeof(T);
  return new (&g_arena[at]) T(static_cast<Args&&>(args)...);
}

constexpr unsigned kMaxDevices = 32;
Device* g_devices[kMaxDevices];
unsigned g_num_devices;

void add_device(Device* dev) {
  if (g_num_devices < kMaxDevices) g_devices[g_num_devices++] = dev;
}

// ---- virtio-mmio from the command line ----

struct MmioNode {
  explicit MmioNode(const virtio::MmioDeviceDesc& d)
      : window(d.base),
        transport(window, d.base, d.gsi, d.level_triggered, d.active_low),
        device(transport, virtio::guest_dma()) {}
  virtio::MmioWindow window;
  virtio::MmioTransport transport;
  Device device;
};

constexpr unsigned kMaxMmio = 32;
uint64_t g_mmio_seen[kMaxMmio];
unsigned g_num_mmio_seen;

void add_mmio(const virtio::MmioDeviceDesc& d) {
  for (unsigned i = 0; i < g_num_mmio_seen; ++i)
    if (g_mmio_seen[i] == d.base) return;  // listed twice (command line and ACPI)
  if (g_num_mmio_seen == kMaxMmio) return;
  g_mmio_seen[g_num_mmio_seen++] = d.base;
  if (!map_mmio(d.base & ~0xfffull, ((d.base & 0xfff) + d.size + 0xfff) & ~0xfffull)) {
    log("virtio: cannot map virtio-mmio window at %#llx\n",
        static_cast<unsigned long long>(d.base));
    return;
  }
  auto* node = make<MmioNode>(d);
  if (!node) {
    log("virtio: too many devices\n");
    return;
  }
  if (node->transport.init().is_error()) return;  // empty slot (NotFound) or already reported
  add_device(&node->device);
}

void mmio_from_cmdline(const char* value, size_t len, void*) {
  virtio::MmioDeviceDesc d;
  if (!virtio::parse_mmio_cmdline(value, len, d)) {
    log("virtio: ignoring malformed virtio_mmio.device=%.*s\n", int(len), value);
    return;
  }
  add_mmio(d);
}

// The DSDT, through the FADT's X_DSDT (offset 140, ACPI 2.0+) or DSDT (offset 40) field.
void mmio_from_acpi() {
  const acpi::SdtHeader* fadt = acpi::find_table("FACP");
  if (!fadt) return;
  auto* raw = reinterpret_cast<const uint8_t*>(fadt);
  uint64_t dsdt = 0;
  if (fadt->length >= 148) __builtin_memcpy(&dsdt, raw + 140, 8);
  if (!dsdt && fadt->length >= 44) {
    uint32_t d32;
    __builtin_memcpy(&d32, raw + 40, 4);
    dsdt = d32;
  }
  if (!dsdt) return;
  auto* hdr = phys_to_virt<const acpi::SdtHeader>(dsdt);
  if (__builtin_memcmp(hdr->signature, "DSDT", 4) != 0 || hdr->length < sizeof(acpi::SdtHeader))
    return;
  virtio::MmioDeviceDesc found[kMaxMmio];
  size_t n = virtio::scan_aml_for_virtio_mmio(
      reinterpret_cast<const uint8_t*>(hdr) + sizeof(acpi::SdtHeader),
      hdr->length - sizeof(acpi::SdtHeader), found, kMaxMmio);
  for (size_t i = 0; i < n && i < kMaxMmio; ++i) add_mmio(found[i]);
}

// ---- virtio-pci ----

constexpr uint16_t kVirtioVendor = 0x1af4;  // 4.1.2 PCI Device Discovery

struct PciModernNode {
  PciModernNode(const pci::Function& f, uint16_t id, pci::BarWindow c, pci::BarWindow n,
                uint32_t mult, uint32_t nlen, pci::BarWindow i, pci::BarWindow d, bool has_d)
      : common(c),
        notify(n),
        isr(i),
        devcfg(d),
        transport(f.addr.bus, f.addr.dev, f.addr.fn, id, common, notify, mult, nlen, isr,
                  has_d ? &devcfg : nullptr),
        device(transport, virtio::guest_dma()) {}
  pci::BarWindow common, notify, isr, devcfg;
  virtio::PciModernTransport transport;
  Device device;
};

struct PciLegacyNode {
  PciLegacyNode(const pci::Function& f, uint16_t id, uint16_t port)
      : io(port),
        transport(f.addr.bus, f.addr.dev, f.addr.fn, id, io),
        device(transport, virtio::guest_dma()) {}
  virtio::PortWindow io;
  virtio::PciLegacyTransport transport;
  Device device;
};

struct CapInfo {
  bool found = false;
  bool io = false;
  uint64_t addr = 0;  // BAR base + offset
  uint32_t length = 0;
  uint32_t extra = 0;  // notify_off_multiplier for the notify capability
};

// 4.1.4: struct virtio_pci_cap { cap_vndr, cap_next, cap_len, cfg_type, bar, id, padding[2],
// offset (le32), length (le32) }; the notify capability adds notify_off_multiplier (le32).
bool read_virtio_caps(const pci::Function& f, CapInfo caps[6]) {
  uint8_t off = 0;
  while ((off = pci::find_capability(f.addr, pci::kCapVendor, off)) != 0) {
    uint8_t type = pci::read8(f.addr, uint8_t(off + 3));
    uint8_t bar_index = pci::read8(f.addr, uint8_t(off + 4));
    if (type < virtio::pci_cap::kCommonCfg || type > virtio::pci_cap::kDeviceCfg) continue;
    if (caps[type].found || bar_index > 5) continue;  // 4.1.4.1: use the first one we understand
    auto bar = pci::read_bar(f.addr, bar_index);
    if (bar.is_error() || bar.value().base == 0) continue;
    uint32_t offset = pci::read32(f.addr, uint8_t(off + 8));
    uint32_t length = pci::read32(f.addr, uint8_t(off + 12));
    if (uint64_t(offset) + length > bar.value().size) {
      log("virtio: pci %02x:%02x.%x: capability %u outside BAR %u\n", f.addr.bus, f.addr.dev,
          f.addr.fn, type, bar_index);
      continue;
    }
    CapInfo& c = caps[type];
    c.found = true;
    c.io = bar.value().io;
    c.addr = bar.value().base + offset;
    c.length = length;
    if (type == virtio::pci_cap::kNotifyCfg) c.extra = pci::read32(f.addr, uint8_t(off + 16));
    if (!c.io && !map_mmio(c.addr & ~0xfffull, ((c.addr & 0xfff) + length + 0xfff) & ~0xfffull)) {
      log("virtio: pci %02x:%02x.%x: cannot map BAR %u\n", f.addr.bus, f.addr.dev, f.addr.fn,
          bar_index);
      c.found = false;
    }
  }
  return caps[virtio::pci_cap::kCommonCfg].found && caps[virtio::pci_cap::kNotifyCfg].found &&
         caps[virtio::pci_cap::kIsrCfg].found;
}

void probe_pci_function(const pci::Function& f, void*) {
  if (f.vendor != kVirtioVendor || f.device < 0x1000 || f.device > 0x107f) return;
  if (f.header_type != 0) return;
  pci::assign_unassigned_bars(f.addr);
  // 4.1.2: 0x1040+id for modern-only devices; 0x1000..0x103f transitional, id in subsystem id.
  uint16_t id = f.device >= 0x1040 ? uint16_t(f.device - 0x1040) : f.subsystem_id;
  CapInfo caps[6];
  if (read_virtio_caps(f, caps)) {
    auto w = [](const CapInfo& c) { return pci::BarWindow(c.io, c.addr); };
    using namespace virtio::pci_cap;
    pci::set_command_bits(f.addr,
                          pci::command::kMemory | pci::command::kIo | pci::command::kBusMaster);
    auto* node = make<PciModernNode>(f, id, w(caps[kCommonCfg]), w(caps[kNotifyCfg]),
                                     caps[kNotifyCfg].extra, caps[kNotifyCfg].length,
                                     w(caps[kIsrCfg]), w(caps[kDeviceCfg]), caps[kDeviceCfg].found);
    if (node) add_device(&node->device);
    return;
  }
  if (f.device >= 0x1040) {
    log("virtio: pci %02x:%02x.%x: modern device without usable capabilities\n", f.addr.bus,
        f.addr.dev, f.addr.fn);
    return;
  }
  auto bar = pci::read_bar(f.addr, 0);
  if (bar.is_error() || !bar.value().io || bar.value().base == 0) {
    log("virtio: pci %02x:%02x.%x: legacy device without an I/O BAR 0\n", f.addr.bus, f.addr.dev,
        f.addr.fn);
    return;
  }
  pci::set_command_bits(f.addr, pci::command::kIo | pci::command::kBusMaster);
  auto* node = make<PciLegacyNode>(f, id, uint16_t(bar.value().base));
  if (node) add_device(&node->device);
}

void bind(Device& dev) {
  const char* mode = dev.transport().modern() ? "modern" : "legacy";
  const virtio::Driver* driver = virtio::find_driver(dev.id());
  if (!driver) {
    log("virtio: %s (id %u) at %s (%s): no driver\n", dev.name(), dev.id(),
        dev.transport().location(), mode);
    return;
  }
  auto r = driver->probe(dev);
  if (r.is_error()) {
    log("virtio: %s at %s (%s): driver %s failed: %s\n", dev.name(), dev.transport().location(),
        mode, driver->name, error_name(r.error()));
    if (!dev.failed()) dev.fail("probe failed");
    return;
  }
  // One line per bound device: what was negotiated, for people and for the integration tests.
  char desc[200];
  dev.describe(desc, sizeof desc);
  log("virtio: %s at %s (%s) driver=%s %s\n", dev.name(), dev.transport().location(), mode,
      driver->name, desc);
}

}  // namespace

virtio::Device* virtio_device(unsigned index) {
  return index < g_num_devices ? g_devices[index] : nullptr;
}

void init() {
  if (!virtio::find_driver(virtio::device_id::kEntropy)) virtio::register_rng_probe_driver();
  cmdline::for_each("virtio_mmio.device", &mmio_from_cmdline, nullptr);
  mmio_from_acpi();
  pci::enumerate(&probe_pci_function, nullptr);
  if (g_num_devices == 0) log("virtio: no devices found\n");
  for (unsigned i = 0; i < g_num_devices; ++i) bind(*g_devices[i]);
  init_power_button();
}

}  // namespace blimp::drivers
