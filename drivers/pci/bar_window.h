// A RegisterWindow on part of a PCI BAR: memory-mapped or I/O ports, whichever the BAR is.
// Guest only.
#pragma once

#include "drivers/virtio/register_window.h"
#include "kernel/arch/io.h"

namespace blimp::pci {

class BarWindow final : public virtio::RegisterWindow {
 public:
  BarWindow() = default;
  BarWindow(bool io, uint64_t base) : io_(io), base_(base) {}
  uint8_t read8(uint32_t o) override {
    return io_ ? arch::inb(port(o)) : arch::mmio_read<uint8_t>(base_ + o);
  }
  uint16_t read16(uint32_t o) override {
    return io_ ? arch::inw(port(o)) : arch::mmio_read<uint16_t>(base_ + o);
  }
  uint32_t read32(uint32_t o) override {
    return io_ ? arch::inl(port(o)) : arch::mmio_read<uint32_t>(base_ + o);
  }
  void write8(uint32_t o, uint8_t v) override {
    io_ ? arch::outb(port(o), v) : arch::mmio_write<uint8_t>(base_ + o, v);
  }
  void write16(uint32_t o, uint16_t v) override {
    io_ ? arch::outw(port(o), v) : arch::mmio_write<uint16_t>(base_ + o, v);
  }
  void write32(uint32_t o, uint32_t v) override {
    io_ ? arch::outl(port(o), v) : arch::mmio_write<uint32_t>(base_ + o, v);
  }

 private:
  uint16_t port(uint32_t o) const { return uint16_t(base_ + o); }
  bool io_ = false;
  uint64_t base_ = 0;
};

}  // namespace blimp::pci
