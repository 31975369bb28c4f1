#include "lib/parse.h"

#include <gtest/gtest.h>

namespace {

TEST(Parse, Sizes) {
  uint64_t v = 0;
  ASSERT_TRUE(blimp::parse_size("0x1f", v));
  EXPECT_EQ(v, 31u);
  ASSERT_TRUE(blimp::parse_size("12k", v));
  EXPECT_EQ(v, 12u << 10);
  ASSERT_TRUE(blimp::parse_size("1020K", v));
  EXPECT_EQ(v, 1020u << 10);
  ASSERT_TRUE(blimp::parse_size("64MiB", v));
  EXPECT_EQ(v, 64u << 20);
  ASSERT_TRUE(blimp::parse_size("7G", v));
  EXPECT_EQ(v, 7ull << 30);
  EXPECT_FALSE(blimp::parse_size("", v));
  EXPECT_FALSE(blimp::parse_size("12x", v));
  EXPECT_FALSE(blimp::parse_size("M", v));
  EXPECT_FALSE(blimp::parse_size("99999999999999999999", v));  // overflows 64 bits
  EXPECT_FALSE(blimp::parse_size("17179869184G", v));          // overflows after the shift
}

TEST(Parse, PlainAndLeadingNumbers) {
  uint64_t v = 0;
  ASSERT_TRUE(blimp::parse_u64("42", v));
  EXPECT_EQ(v, 42u);
  EXPECT_FALSE(blimp::parse_u64("42s", v));
  const char* p = "250ms";
  ASSERT_TRUE(blimp::parse_leading_u64(p, v));
  EXPECT_EQ(v, 250u);
  EXPECT_STREQ(p, "ms");
}

}  // namespace
