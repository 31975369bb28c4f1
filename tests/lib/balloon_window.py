"""The balloon device's registers as the host sees them, through QEMU's qtest socket (which works
beside TCG): enough to read its configuration and to reset it (write 0 to the device status), as
a host that resets the device under a running guest would. virtio-mmio (microvm), modern
virtio-pci (common configuration structure found through the PCI capabilities, config cycles on
ports 0xCF8/0xCFC) and legacy virtio-pci (I/O BAR 0)."""
from blimp_vm import check

MMIO_FIRST, MMIO_SLOTS, MMIO_STRIDE = 0xfeb00000, 32, 0x200  # microvm's virtio-mmio slots
MAGIC, REG_DEVICE_ID, REG_STATUS, CONFIG = 0x74726976, 0x008, 0x070, 0x100
BALLOON_ID = 5


class MmioBalloon:
    """The balloon's virtio-mmio window: the one the guest printed, cross-checked by a scan."""

    def __init__(self, vm, qt):
        m = vm.wait_for(r"virtio: balloon at mmio (0x[0-9a-f]+)", 60)
        base = int(m.group(1), 16)
        found = [MMIO_FIRST + n * MMIO_STRIDE for n in range(MMIO_SLOTS)
                 if qt.readl(MMIO_FIRST + n * MMIO_STRIDE) == MAGIC
                 and qt.readl(MMIO_FIRST + n * MMIO_STRIDE + REG_DEVICE_ID) == BALLOON_ID]
        check(found == [base], f"balloon printed at {base:#x}, scan found {found}")
        self.qt, self.base = qt, base

    def config(self, offset):
        return self.qt.readl(self.base + CONFIG + offset)

    def reset(self):
        self.qt.writel(self.base + REG_STATUS, 0)
        return self.qt.readl(self.base + REG_STATUS)


class PciBalloon:
    """Modern virtio-pci: the common and device configuration structures, from the vendor
    capabilities (4.1.4) of the function the guest printed, in the BARs the guest assigned."""
    COMMON, DEVICE, DEVICE_STATUS = 1, 4, 0x14

    def __init__(self, vm, qt):
        m = vm.wait_for(r"virtio: balloon at pci ([0-9a-f]{2}):([0-9a-f]{2})\.(\d) \(modern\)", 60)
        self.qt = qt
        bus, slot, fn = int(m.group(1), 16), int(m.group(2), 16), int(m.group(3))
        self.bdf = (bus << 16) | (slot << 11) | (fn << 8)
        # 0x1045 modern, 0x1002 transitional (what q35's root bus gets by default)
        check(self.cfg(0) in (0x10451af4, 0x10021af4), f"not a virtio-balloon: {self.cfg(0):#x}")
        where = {}
        ptr = self.cfg(0x34) & 0xfc
        while ptr:
            head = self.cfg(ptr)
            kind = (head >> 24) & 0xff
            if head & 0xff == 0x09 and kind in (self.COMMON, self.DEVICE) and kind not in where:
                # vendor-specific: a virtio structure (the first of each type counts)
                where[kind] = self.bar(self.cfg(ptr + 4) & 0xff) + self.cfg(ptr + 8)
            ptr = (head >> 8) & 0xfc
        check(self.COMMON in where and self.DEVICE in where, f"virtio capabilities: {where}")
        self.common, self.device = where[self.COMMON], where[self.DEVICE]

    def cfg(self, offset):
        self.qt.command(f"outl 0xcf8 {0x80000000 | self.bdf | offset:#x}")
        return int(self.qt.command("inl 0xcfc")[0], 16)

    def bar(self, i):
        lo = self.cfg(0x10 + 4 * i)
        check(not lo & 1, f"BAR {i} is an I/O BAR")
        addr = lo & ~0xf
        if (lo >> 1) & 3 == 2:
            addr |= self.cfg(0x14 + 4 * i) << 32
        return addr

    def config(self, offset):
        return self.qt.readl(self.device + offset)

    def reset(self):
        self.qt.command(f"writeb {self.common + self.DEVICE_STATUS:#x} 0x0")
        return int(self.qt.command(f"readb {self.common + self.DEVICE_STATUS:#x}")[0], 16)


class LegacyPciBalloon(PciBalloon):
    """Legacy virtio-pci (4.1.4.8): registers in I/O BAR 0, device status at 18, the device's
    configuration at 20 (the balloon has no MSI-X)."""
    STATUS, CONFIG = 18, 20

    def __init__(self, vm, qt):
        m = vm.wait_for(r"virtio: balloon at pci ([0-9a-f]{2}):([0-9a-f]{2})\.(\d) \(legacy\)", 60)
        bus, slot, fn = int(m.group(1), 16), int(m.group(2), 16), int(m.group(3))
        self.qt, self.bdf = qt, (bus << 16) | (slot << 11) | (fn << 8)
        check(self.cfg(0) == 0x10021af4, f"not a virtio-balloon: {self.cfg(0):#x}")
        bar0 = self.cfg(0x10)
        check(bar0 & 1, f"BAR 0 is not an I/O BAR: {bar0:#x}")
        self.port = bar0 & ~3

    def config(self, offset):
        return int(self.qt.command(f"inl {self.port + self.CONFIG + offset:#x}")[0], 16)

    def reset(self):
        self.qt.command(f"outb {self.port + self.STATUS:#x} 0x0")
        return int(self.qt.command(f"inb {self.port + self.STATUS:#x}")[0], 16)


def window_for(vm, qt, machine, legacy=False):
    """The balloon window of a running guest on `machine` (microvm, q35 or pc)."""
    if machine == "microvm":
        return MmioBalloon(vm, qt)
    return LegacyPciBalloon(vm, qt) if legacy else PciBalloon(vm, qt)
