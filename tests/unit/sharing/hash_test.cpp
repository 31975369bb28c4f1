// Our header-only, scalar, builtin-memcpy XXH3-64 must equal the system libxxhash's (the host
// side, hangar and QEMU's query-hints, compare guest hashes with hashes computed elsewhere).
#include <gtest/gtest.h>
// The system library's own XXH3 (not inlined): link-time symbols of libxxhash.
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <random>

#include "mm/sharing/xxh3.h"

namespace s = blimp::mm::sharing;

TEST(SharingHash, ZeroPageMatchesLibxxhash) {
  alignas(4096) static unsigned char page[4096] = {};
  EXPECT_EQ(s::page_hash(page), XXH3_64bits(page, sizeof page));
  EXPECT_EQ(s::zero_page_hash(), XXH3_64bits(page, sizeof page));
  EXPECT_TRUE(s::page_is_zero(page));
  // XXH3-64 of 4096 zero bytes, seed 0, pinned (libxxhash 0.8.1), so that a change of algorithm
  // on both sides at once cannot go unnoticed: docs/sharing.md quotes it.
  EXPECT_EQ(s::zero_page_hash(), 0x93d76fe148c689baull);
}

TEST(SharingHash, PatternAndRandomPagesMatchLibxxhash) {
  alignas(4096) static unsigned char page[4096];
  for (int i = 0; i < 4096; i++) page[i] = static_cast<unsigned char>(i * 7 + 3);
  EXPECT_EQ(s::page_hash(page), XXH3_64bits(page, 4096));
  EXPECT_FALSE(s::page_is_zero(page));
  std::mt19937_64 rng(42);
  for (int n = 0; n < 200; n++) {
    for (int i = 0; i < 512; i++) {
      uint64_t v = rng();
      memcpy(page + i * 8, &v, 8);
    }
    ASSERT_EQ(s::page_hash(page), XXH3_64bits(page, 4096)) << "page " << n;
  }
}

TEST(SharingHash, UnalignedAndOddLengthsMatchLibxxhash) {
  static unsigned char buf[8192 + 64];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = static_cast<unsigned char>(i ^ (i >> 7));
  for (size_t off : {0, 1, 3, 8, 13}) {
    for (size_t len : {0, 1, 3, 16, 17, 128, 129, 240, 241, 1000, 4096, 8192}) {
      ASSERT_EQ(s::xxh3_64(buf + off, len), XXH3_64bits(buf + off, len))
          << "off " << off << " len " << len;
    }
  }
}

TEST(SharingHash, OneBitChangesTheHash) {
  alignas(4096) static unsigned char page[4096] = {};
  uint64_t zero = s::page_hash(page);
  page[4095] = 1;
  EXPECT_NE(s::page_hash(page), zero);
  EXPECT_FALSE(s::page_is_zero(page));
}
