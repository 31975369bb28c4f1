#include "lib/format.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace {

template <typename... Args>
std::string ours(const char* fmt, Args... args) {
  char buf[256];
  blimp::format(buf, sizeof buf, fmt, args...);
  return buf;
}

template <typename... Args>
std::string libc(const char* fmt, Args... args) {
  char buf[256];
  snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

#define EXPECT_SAME(...) EXPECT_EQ(ours(__VA_ARGS__), libc(__VA_ARGS__))

TEST(Format, MatchesLibcForIntegers) {
  EXPECT_SAME("%d %i %u", -42, 7, 3000000000u);
  EXPECT_SAME("%x %X %o", 0xbeefu, 0xbeefu, 8u);
  EXPECT_SAME("%#x %#lx %#o %#x", 255u, 0x1000ul, 8u, 0u);
  EXPECT_SAME("%5d|%-5d|%05d|%+d|% d", 42, 42, 42, 42, 42);
  EXPECT_SAME("%.3d %8.3d %-8.3x", 5, 5, 10u);
  EXPECT_SAME("%ld %lu %lld %llu", -1L, ~0UL, -9000000000LL, 18446744073709551615ULL);
  EXPECT_SAME("%zu %hhu %hd", size_t(12345), 300, 70000);
  EXPECT_SAME("%016lx", 0x123456789abcUL);
  EXPECT_SAME("%d", -2147483647 - 1);
  EXPECT_SAME("%lld", -9223372036854775807LL - 1);
}

TEST(Format, MatchesLibcForStringsAndChars) {
  EXPECT_SAME("[%s] [%10s] [%-10s] [%.2s]", "abc", "abc", "abc", "abc");
  EXPECT_SAME("%c%c%3c%-3c|", 'a', 'b', 'c', 'd');
  EXPECT_SAME("%*d|%-*d|%.*s", 6, 1, 6, 2, 2, "xyz");
  EXPECT_SAME("100%%");
}

TEST(Format, PointerAndNull) {
  EXPECT_EQ(ours("%p", reinterpret_cast<void*>(0x1234)), "0x1234");
  const char* volatile null_string = nullptr;  // volatile: keep GCC from diagnosing the null
  EXPECT_EQ(ours("%s", null_string), "(null)");
}

TEST(Format, TruncatesAndReportsFullLength) {
  char buf[8];
  size_t n = blimp::format(buf, sizeof buf, "%s", "0123456789");
  EXPECT_EQ(n, 10u);
  EXPECT_STREQ(buf, "0123456");
  EXPECT_EQ(blimp::format(nullptr, 0, "%d", 12345), 5u);
}

TEST(Format, UnknownConversionIsVisible) { EXPECT_EQ(ours("%q"), "%q"); }

}  // namespace
