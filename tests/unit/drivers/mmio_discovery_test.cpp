#include "drivers/virtio/mmio_discovery.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace blimp::virtio::test {
namespace {

bool parse(const char* s, MmioDeviceDesc& d) { return parse_mmio_cmdline(s, strlen(s), d); }

TEST(MmioCmdline, QemuSyntax) {
  MmioDeviceDesc d;
  ASSERT_TRUE(parse("512@0xfeb00e00:12", d));
  EXPECT_EQ(d.base, 0xfeb00e00u);
  EXPECT_EQ(d.size, 512u);
  EXPECT_EQ(d.gsi, 12u);
  EXPECT_FALSE(d.level_triggered);
  ASSERT_TRUE(parse("4K@0x10000000:5:3", d));  // size suffix and Linux's optional device id
  EXPECT_EQ(d.size, 4096u);
  EXPECT_EQ(d.gsi, 5u);
  ASSERT_TRUE(parse("1M@268435456:7", d));
  EXPECT_EQ(d.base, 0x10000000u);
}

TEST(MmioCmdline, Malformed) {
  MmioDeviceDesc d;
  for (const char* bad :
       {"", "512", "512@", "512@0xfeb00e00", "512@0xfeb00e00:", "x@1:2", "16@0x1000:5",
        "512@0x1000:300", "512@0:5", "512@0x1000:5junk", "512@0xffffffffffffffffff:5"}) {
    EXPECT_FALSE(parse(bad, d)) << bad;
  }
}

// AML as QEMU's microvm emits it (hw/i386/acpi-microvm.c): Device (VRnn) { Name (_HID,
// "LNRO0005") Name (_UID, n) Name (_CCA, One) Name (_CRS, ResourceTemplate () {
// Memory32Fixed (ReadWrite, base, 0x200) Interrupt (ResourceConsumer, Level, ActiveHigh,
// Exclusive) { gsi } }) }
std::vector<uint8_t> device_aml(uint8_t index, uint32_t base, uint32_t gsi, uint8_t irq_flags) {
  std::vector<uint8_t> body = {'V', 'R', uint8_t('0' + index / 10), uint8_t('0' + index % 10)};
  auto push = [&](std::initializer_list<uint8_t> b) { body.insert(body.end(), b); };
  push({0x08, '_', 'H', 'I', 'D', 0x0d});
  for (char c : std::string("LNRO0005")) body.push_back(uint8_t(c));
  push({0x00});
  push({0x08, '_', 'U', 'I', 'D', 0x0a, index});
  push({0x08, '_', 'C', 'C', 'A', 0x01});
  push({0x08, '_', 'C', 'R', 'S', 0x11, 0x1a, 0x0a, 0x17});
  push({0x86, 0x09, 0x00, 0x01});
  for (int i = 0; i < 4; ++i) body.push_back(uint8_t(base >> (8 * i)));
  push({0x00, 0x02, 0x00, 0x00});
  push({0x89, 0x06, 0x00, irq_flags, 0x01});
  for (int i = 0; i < 4; ++i) body.push_back(uint8_t(gsi >> (8 * i)));
  push({0x79, 0x00});
  std::vector<uint8_t> dev = {0x5b, 0x82, uint8_t(body.size() + 1)};
  dev.insert(dev.end(), body.begin(), body.end());
  return dev;
}

TEST(MmioAml, FindsMicrovmDevices) {
  std::vector<uint8_t> aml = {0x10, 0x40, '_', 'S', 'B', '_'};  // Scope (\_SB) prefix (inexact)
  auto a = device_aml(23, 0xfeb02e00, 47, 0x01);  // level, active high (flags: consumer only)
  auto b = device_aml(22, 0xfeb02c00, 46, 0x07);  // edge, active low
  aml.insert(aml.end(), a.begin(), a.end());
  aml.insert(aml.end(), b.begin(), b.end());
  MmioDeviceDesc out[4];
  ASSERT_EQ(scan_aml_for_virtio_mmio(aml.data(), aml.size(), out, 4), 2u);
  EXPECT_EQ(out[0].base, 0xfeb02e00u);
  EXPECT_EQ(out[0].size, 0x200u);
  EXPECT_EQ(out[0].gsi, 47u);
  EXPECT_TRUE(out[0].level_triggered);
  EXPECT_FALSE(out[0].active_low);
  EXPECT_EQ(out[1].gsi, 46u);
  EXPECT_FALSE(out[1].level_triggered);
  EXPECT_TRUE(out[1].active_low);
}

TEST(MmioAml, TruncatedOrForeignAmlIsIgnored) {
  auto a = device_aml(0, 0xfeb00000, 16, 0x01);
  MmioDeviceDesc out[2];
  for (size_t cut = 0; cut < a.size() - 2; ++cut)
    EXPECT_EQ(scan_aml_for_virtio_mmio(a.data(), cut, out, 2), 0u) << cut;
  std::vector<uint8_t> other(a);
  other[other.size() - 20] ^= 0xff;  // corrupt the interrupt descriptor
  std::string hid = "PNP0501";
  EXPECT_EQ(
      scan_aml_for_virtio_mmio(reinterpret_cast<const uint8_t*>(hid.data()), hid.size(), out, 2),
      0u);
  EXPECT_EQ(scan_aml_for_virtio_mmio(nullptr, 0, out, 2), 0u);
}

}  // namespace
}  // namespace blimp::virtio::test
