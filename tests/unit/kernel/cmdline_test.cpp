#include "kernel/cmdline.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

namespace cmdline = blimp::cmdline;

TEST(Cmdline, KeyValueLookup) {
  cmdline::init("app=memhog  size=64M verbose virtio_mmio.device=512@0xfeb00e00:12");
  char buf[32];
  ASSERT_TRUE(cmdline::get("app", buf, sizeof buf));
  EXPECT_STREQ(buf, "memhog");
  EXPECT_FALSE(cmdline::get("ap", buf, sizeof buf));
  EXPECT_FALSE(cmdline::get("missing", buf, sizeof buf));
  EXPECT_TRUE(cmdline::has_flag("verbose"));
  EXPECT_FALSE(cmdline::has_flag("verb"));
  unsigned long long v = 0;
  ASSERT_TRUE(cmdline::get_u64("size", v));
  EXPECT_EQ(v, 64ull << 20);
}

TEST(Cmdline, NumbersRejectGarbage) {
  cmdline::init("a=0x1f b=12k c=12x d= e=7G");
  unsigned long long v = 0;
  ASSERT_TRUE(cmdline::get_u64("a", v));
  EXPECT_EQ(v, 31u);
  ASSERT_TRUE(cmdline::get_u64("b", v));
  EXPECT_EQ(v, 12u << 10);
  EXPECT_FALSE(cmdline::get_u64("c", v));
  EXPECT_FALSE(cmdline::get_u64("d", v));
  ASSERT_TRUE(cmdline::get_u64("e", v));
  EXPECT_EQ(v, 7ull << 30);
}

TEST(Cmdline, ValueTooLongForBuffer) {
  cmdline::init("key=0123456789");
  char small[4];
  EXPECT_FALSE(cmdline::get("key", small, sizeof small));
}

TEST(Cmdline, ForEachVisitsEveryRepeat) {
  cmdline::init("virtio_mmio.device=512@0x1000:5 x=1 virtio_mmio.device=512@0x2000:6");
  std::vector<std::string> seen;
  cmdline::for_each(
      "virtio_mmio.device",
      [](const char* v, size_t len, void* ctx) {
        static_cast<std::vector<std::string>*>(ctx)->emplace_back(v, len);
      },
      &seen);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], "512@0x1000:5");
  EXPECT_EQ(seen[1], "512@0x2000:6");
}

}  // namespace
