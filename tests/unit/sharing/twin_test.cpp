// Within-VM twin detection (sharing=vm).
#include <gtest/gtest.h>

#include <vector>

#include "mm/sharing/twin_table.h"

namespace s = blimp::mm::sharing;
using Seen = s::TwinTable::Seen;

TEST(TwinTable, FirstSecondMore) {
  std::vector<s::TwinTable::Slot> slots(64);
  s::TwinTable t;
  t.init(slots.data(), slots.size());
  uint64_t first = 0;
  EXPECT_EQ(t.add(0xabc, 10, first), Seen::First);
  EXPECT_EQ(t.add(0xdef, 11, first), Seen::First);
  EXPECT_EQ(t.add(0xabc, 12, first), Seen::Second);
  EXPECT_EQ(first, 10u);
  EXPECT_EQ(t.add(0xabc, 13, first), Seen::More);
  EXPECT_EQ(first, 10u);
  EXPECT_EQ(t.count(0xabc), 3u);
  EXPECT_EQ(t.count(0xdef), 1u);
  EXPECT_EQ(t.count(0x123), 0u);
  // Hash 0 is a hash like any other.
  EXPECT_EQ(t.add(0, 20, first), Seen::First);
  EXPECT_EQ(t.add(0, 21, first), Seen::Second);
  EXPECT_EQ(first, 20u);
}

TEST(TwinTable, CollidingSlotsAndFullTable) {
  std::vector<s::TwinTable::Slot> slots(100);  // rounded down to 64
  s::TwinTable t;
  t.init(slots.data(), slots.size());
  EXPECT_EQ(t.capacity(), 64u);
  uint64_t first = 0;
  // Same low bits: linear probing keeps them apart.
  for (uint64_t i = 0; i < 48; i++) ASSERT_EQ(t.add(i << 32, i, first), Seen::First) << i;
  EXPECT_EQ(t.size(), 48u);
  EXPECT_EQ(t.add(uint64_t{99} << 32, 99, first), Seen::Full);    // 3/4 load
  EXPECT_EQ(t.add(uint64_t{5} << 32, 100, first), Seen::Second);  // known hashes still count
  EXPECT_EQ(first, 5u);
  s::TwinTable empty;
  EXPECT_EQ(empty.add(1, 1, first), Seen::Full);
}
