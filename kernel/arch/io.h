// x86 port I/O and memory-mapped register access. MMIO goes through volatile accesses of the exact
// width the device expects; devices (virtio-mmio, LAPIC, IOAPIC) are mapped uncached identity.
#pragma once

#include <cstdint>

namespace blimp::arch {

inline void outb(uint16_t port, uint8_t v) { asm volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
inline void outw(uint16_t port, uint16_t v) { asm volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
inline void outl(uint16_t port, uint32_t v) { asm volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
inline uint8_t inb(uint16_t port) {
  uint8_t v;
  asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
inline uint16_t inw(uint16_t port) {
  uint16_t v;
  asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
inline uint32_t inl(uint16_t port) {
  uint32_t v;
  asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}

template <typename T>
inline T mmio_read(uint64_t addr) {
  return *reinterpret_cast<volatile T*>(addr);
}
template <typename T>
inline void mmio_write(uint64_t addr, T v) {
  *reinterpret_cast<volatile T*>(addr) = v;
}

}  // namespace blimp::arch
