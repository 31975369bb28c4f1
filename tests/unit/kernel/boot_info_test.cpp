#include "kernel/boot/boot_info.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kernel/boot/boot_protocol.h"

namespace {

using blimp::BootInfo;
using blimp::MemoryRange;

TEST(NormalizeRanges, SortsMergesAndDropsEmpty) {
  // As firmware hands it out: unsorted, overlapping, a zero entry at the end.
  MemoryRange r[] = {{0x100000, 0x7ee0000},
                     {0x0, 0x9fc00},
                     {0x8000000, 0x1000000},
                     {0x7fe0000, 0x40000},
                     {0x0, 0x0}};
  size_t n = blimp::normalize_ranges(r, 5);
  ASSERT_EQ(n, 2u);
  EXPECT_EQ(r[0].base, 0u);
  EXPECT_EQ(r[0].size, 0x9f000u);  // trimmed to whole pages
  EXPECT_EQ(r[1].base, 0x100000u);
  EXPECT_EQ(r[1].end(), 0x9000000u);
}

TEST(NormalizeRanges, TrimsPartialPages) {
  MemoryRange r[] = {{0x1001, 0x2000}, {0x10000, 0xfff}};
  size_t n = blimp::normalize_ranges(r, 2);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(r[0].base, 0x2000u);
  EXPECT_EQ(r[0].size, 0x1000u);
}

struct [[gnu::packed]] PvhInfo {
  uint32_t magic, version, flags, nr_modules;
  uint64_t modlist, cmdline, rsdp, memmap;
  uint32_t memmap_entries, reserved;
};
struct [[gnu::packed]] PvhEntry {
  uint64_t addr, size;
  uint32_t type, reserved;
};

TEST(ParseBootInfo, PvhMemoryMapAndCommandLine) {
  static const char cmdline[] = "app=hello x=1";
  PvhEntry map[] = {{0x100000, 0x3ff00000, 1, 0}, {0xfeffc000, 0x4000, 2, 0}, {0, 0x9fc00, 1, 0}};
  PvhInfo info{0x336ec578, 1,
               0,          0,
               0,          reinterpret_cast<uint64_t>(cmdline),
               0x12345,    reinterpret_cast<uint64_t>(map),
               3,          0};
  BootInfo boot;
  const char* error = nullptr;
  ASSERT_TRUE(
      blimp::parse_boot_info(BOOT_PROTOCOL_PVH, reinterpret_cast<uint64_t>(&info), boot, error));
  EXPECT_STREQ(boot.cmdline, cmdline);
  EXPECT_NE(boot.cmdline, cmdline);  // a copy, not the loader's memory
  EXPECT_EQ(boot.rsdp, 0x12345u);
  ASSERT_EQ(boot.ram_count, 2u);  // the reserved entry is not RAM
  EXPECT_EQ(boot.ram[0].base, 0u);
  EXPECT_EQ(boot.total_ram(), 0x9f000u + 0x3ff00000u);
}

TEST(ParseBootInfo, RejectsBadPvhMagic) {
  PvhInfo info{};
  info.magic = 0xdeadbeef;
  BootInfo boot;
  const char* error = nullptr;
  EXPECT_FALSE(
      blimp::parse_boot_info(BOOT_PROTOCOL_PVH, reinterpret_cast<uint64_t>(&info), boot, error));
  EXPECT_NE(std::strstr(error, "magic"), nullptr);
}

TEST(ParseBootInfo, Multiboot2Tags) {
  std::vector<uint8_t> mbi(256, 0);
  auto put32 = [&](size_t off, uint32_t v) { std::memcpy(&mbi[off], &v, 4); };
  auto put64 = [&](size_t off, uint64_t v) { std::memcpy(&mbi[off], &v, 8); };
  size_t off = 8;
  put32(off, 1);  // cmdline tag
  put32(off + 4, 8 + 10);
  std::memcpy(&mbi[off + 8], "app=hello", 10);
  off += 24;
  put32(off, 6);  // memory map: two 24-byte entries
  put32(off + 4, 16 + 48);
  put32(off + 8, 24);
  put64(off + 16, 0x100000);
  put64(off + 24, 0x1000000);
  put32(off + 32, 1);
  put64(off + 40, 0xfffc0000);
  put64(off + 48, 0x40000);
  put32(off + 56, 2);
  off += 64;
  put32(off, 0);  // end
  put32(off + 4, 8);
  off += 8;
  put32(0, static_cast<uint32_t>(off));
  BootInfo boot;
  const char* error = nullptr;
  ASSERT_TRUE(blimp::parse_boot_info(BOOT_PROTOCOL_MULTIBOOT2,
                                     reinterpret_cast<uint64_t>(mbi.data()), boot, error))
      << error;
  EXPECT_STREQ(boot.cmdline, "app=hello");
  ASSERT_EQ(boot.ram_count, 1u);
  EXPECT_EQ(boot.ram[0].size, 0x1000000u);
}

TEST(ParseBootInfo, UnknownProtocol) {
  BootInfo boot;
  const char* error = nullptr;
  EXPECT_FALSE(blimp::parse_boot_info(BOOT_PROTOCOL_UNKNOWN, 0, boot, error));
  EXPECT_NE(error, nullptr);
}

}  // namespace
