// A window of device registers: memory-mapped (virtio-mmio, PCI memory BARs) or I/O ports (the
// legacy virtio-pci BAR0). Transports talk to their device only through windows, so the host unit
// tests can put a fake register file behind the same transport code the guest runs.
#pragma once

#include <cstdint>

#if defined(BLIMP_GUEST)
#include "kernel/arch/io.h"
#endif

namespace blimp::virtio {

class RegisterWindow {
 public:
  virtual uint8_t read8(uint32_t off) = 0;
  virtual uint16_t read16(uint32_t off) = 0;
  virtual uint32_t read32(uint32_t off) = 0;
  virtual void write8(uint32_t off, uint8_t v) = 0;
  virtual void write16(uint32_t off, uint16_t v) = 0;
  virtual void write32(uint32_t off, uint32_t v) = 0;
  // 64-bit registers as two 32-bit halves, low first (virtio 1.2, 4.1.3.1 and 4.2.2.2).
  void write64(uint32_t off, uint64_t v) {
    write32(off, uint32_t(v));
    write32(off + 4, uint32_t(v >> 32));
  }

 protected:
  ~RegisterWindow() = default;
};

#if defined(BLIMP_GUEST)
class MmioWindow final : public RegisterWindow {
 public:
  MmioWindow() = default;
  explicit MmioWindow(uint64_t base) : base_(base) {}
  uint64_t base() const { return base_; }
  uint8_t read8(uint32_t off) override { return arch::mmio_read<uint8_t>(base_ + off); }
  uint16_t read16(uint32_t off) override { return arch::mmio_read<uint16_t>(base_ + off); }
  uint32_t read32(uint32_t off) override { return arch::mmio_read<uint32_t>(base_ + off); }
  void write8(uint32_t off, uint8_t v) override { arch::mmio_write<uint8_t>(base_ + off, v); }
  void write16(uint32_t off, uint16_t v) override { arch::mmio_write<uint16_t>(base_ + off, v); }
  void write32(uint32_t off, uint32_t v) override { arch::mmio_write<uint32_t>(base_ + off, v); }

 private:
  uint64_t base_ = 0;
};

class PortWindow final : public RegisterWindow {
 public:
  PortWindow() = default;
  explicit PortWindow(uint16_t base) : base_(base) {}
  uint16_t base() const { return base_; }
  uint8_t read8(uint32_t off) override { return arch::inb(uint16_t(base_ + off)); }
  uint16_t read16(uint32_t off) override { return arch::inw(uint16_t(base_ + off)); }
  uint32_t read32(uint32_t off) override { return arch::inl(uint16_t(base_ + off)); }
  void write8(uint32_t off, uint8_t v) override { arch::outb(uint16_t(base_ + off), v); }
  void write16(uint32_t off, uint16_t v) override { arch::outw(uint16_t(base_ + off), v); }
  void write32(uint32_t off, uint32_t v) override { arch::outl(uint16_t(base_ + off), v); }

 private:
  uint16_t base_ = 0;
};
#endif

}  // namespace blimp::virtio
