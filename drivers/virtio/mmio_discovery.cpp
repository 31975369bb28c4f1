#include "drivers/virtio/mmio_discovery.h"

namespace blimp::virtio {

namespace {

bool parse_number(const char*& p, const char* end, uint64_t& out) {
  uint64_t v = 0;
  unsigned base = 10;
  if (end - p > 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
    base = 16;
    p += 2;
  }
  const char* start = p;
  for (; p < end; ++p) {
    char c = *p;
    unsigned d;
    if (c >= '0' && c <= '9')
      d = unsigned(c - '0');
    else if (base == 16 && c >= 'a' && c <= 'f')
      d = unsigned(c - 'a' + 10);
    else if (base == 16 && c >= 'A' && c <= 'F')
      d = unsigned(c - 'A' + 10);
    else
      break;
    if (v > (~uint64_t(0) >> 4)) return false;  // overflow
    v = v * base + d;
  }
  out = v;
  return p > start;
}

uint32_t le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

}  // namespace

bool parse_mmio_cmdline(const char* value, size_t len, MmioDeviceDesc& out) {
  const char* p = value;
  const char* end = value + len;
  uint64_t size, base, irq;
  if (!parse_number(p, end, size)) return false;
  if (p < end && (*p == 'K' || *p == 'k'))
    size <<= 10, ++p;
  else if (p < end && (*p == 'M' || *p == 'm'))
    size <<= 20, ++p;
  else if (p < end && (*p == 'G' || *p == 'g'))
    size <<= 30, ++p;
  if (p == end || *p++ != '@' || !parse_number(p, end, base)) return false;
  if (p == end || *p++ != ':' || !parse_number(p, end, irq)) return false;
  if (p < end && *p != ':') return false;  // an optional ":ID" may follow
  if (size < 0x100 || irq > 255 || base == 0 || base + size < base) return false;
  out = MmioDeviceDesc{base, size, uint32_t(irq), false, false};
  return true;
}

size_t scan_aml_for_virtio_mmio(const uint8_t* aml, size_t len, MmioDeviceDesc* out, size_t max) {
  static constexpr char kHid[] = "LNRO0005";
  static constexpr size_t kHidLen = 8;
  static constexpr size_t kWindow = 160;  // _UID, _CCA and the _CRS follow the _HID closely
  size_t found = 0;
  for (size_t i = 0; i + kHidLen + 1 <= len; ++i) {
    bool match = true;
    for (size_t k = 0; k < kHidLen && match; ++k) match = aml[i + k] == uint8_t(kHid[k]);
    if (!match || aml[i + kHidLen] != 0) continue;
    size_t end = i + kHidLen + kWindow < len ? i + kHidLen + kWindow : len;
    MmioDeviceDesc d;
    bool have_mem = false, have_irq = false;
    for (size_t j = i + kHidLen; j < end; ++j) {
      // The next device's _HID ends this one's window.
      if (j + 2 <= end && aml[j] == 0x5b && aml[j + 1] == 0x82) break;
      // ACPI 6.4, 6.4.3.4 Memory32Fixed: 0x86, length 9, info, base (4), length (4).
      if (!have_mem && j + 12 <= end && aml[j] == 0x86 && aml[j + 1] == 0x09 &&
          aml[j + 2] == 0x00) {
        d.base = le32(&aml[j + 4]);
        d.size = le32(&aml[j + 8]);
        have_mem = d.base != 0 && d.size != 0;
        if (have_mem) j += 11;
        continue;
      }
      // 6.4.3.6 Extended Interrupt: 0x89, length (2), flags, count, interrupt numbers (4 each).
      // Flags bit 1: edge (1) or level (0); bit 2: active low (1) or high (0).
      if (!have_irq && j + 9 <= end && aml[j] == 0x89 && aml[j + 2] == 0x00 && aml[j + 1] >= 6 &&
          aml[j + 4] >= 1) {
        uint8_t flags = aml[j + 3];
        d.gsi = le32(&aml[j + 5]);
        d.level_triggered = !(flags & 2);
        d.active_low = flags & 4;
        have_irq = d.gsi < 256;
        if (have_irq) j += 8;
        continue;
      }
    }
    if (have_mem && have_irq) {
      if (found < max) out[found] = d;
      ++found;
    }
  }
  return found;
}

}  // namespace blimp::virtio
