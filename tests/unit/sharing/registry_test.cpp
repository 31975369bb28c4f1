// seal/unseal bookkeeping: SealRegistry.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <set>
#include <vector>

#include "mm/sharing/seal_registry.h"

namespace s = blimp::mm::sharing;
using blimp::Error;

namespace {
struct Piece {
  uint64_t pfn, pages;
  bool operator==(const Piece&) const = default;
};
void collect(uint64_t pfn, uint64_t pages, void* ctx) {
  static_cast<std::vector<Piece>*>(ctx)->push_back({pfn, pages});
}
}  // namespace

TEST(SealRegistry, InsertCoalescesAndRefusesOverlap) {
  auto r = std::make_unique<s::SealRegistry>();
  ASSERT_FALSE(r->insert(10, 5).is_error());  // 10..14
  ASSERT_FALSE(r->insert(20, 5).is_error());  // 20..24
  EXPECT_EQ(r->range_count(), 2u);
  ASSERT_FALSE(r->insert(15, 5).is_error());  // fills the gap: one range 10..24
  EXPECT_EQ(r->range_count(), 1u);
  EXPECT_EQ(r->sealed_pages(), 15u);
  auto dup = r->insert(24, 2);
  ASSERT_TRUE(dup.is_error());
  EXPECT_EQ(dup.error(), Error::InvalidArgument);
  EXPECT_TRUE(r->insert(0, 0).is_error());
  EXPECT_EQ(r->sealed_pages(), 15u);
  EXPECT_TRUE(r->contains(10));
  EXPECT_TRUE(r->contains(24));
  EXPECT_FALSE(r->contains(25));
  EXPECT_FALSE(r->contains(9));
  EXPECT_EQ(r->overlap(0, 100), 15u);
  EXPECT_EQ(r->overlap(12, 2), 2u);
}

TEST(SealRegistry, RemoveHeadTailMiddleAndAcrossRanges) {
  auto r = std::make_unique<s::SealRegistry>();
  ASSERT_FALSE(r->insert(100, 100).is_error());  // 100..199
  ASSERT_FALSE(r->insert(300, 10).is_error());   // 300..309
  std::vector<Piece> got;
  auto n = r->remove(140, 10, collect, &got);  // middle: split
  ASSERT_FALSE(n.is_error());
  EXPECT_EQ(n.value(), 10u);
  EXPECT_EQ(got, (std::vector<Piece>{{140, 10}}));
  EXPECT_EQ(r->range_count(), 3u);
  EXPECT_FALSE(r->contains(145));
  EXPECT_TRUE(r->contains(139));
  EXPECT_TRUE(r->contains(150));
  got.clear();
  n = r->remove(50, 55, collect, &got);  // head of the first: 100..104
  EXPECT_EQ(n.value(), 5u);
  EXPECT_EQ(got, (std::vector<Piece>{{100, 5}}));
  got.clear();
  n = r->remove(190, 115, collect, &got);  // tail of 150..199 and head of 300..309
  EXPECT_EQ(n.value(), 15u);
  EXPECT_EQ(got, (std::vector<Piece>{{190, 10}, {300, 5}}));
  EXPECT_EQ(r->sealed_pages(), 100u - 10 - 5 - 10 + 10 - 5);
  got.clear();
  n = r->remove(0, 1000, collect, &got);  // everything
  EXPECT_EQ(n.value(), 35u + 40 + 5);
  EXPECT_EQ(r->sealed_pages(), 0u);
  EXPECT_EQ(r->range_count(), 0u);
  n = r->remove(0, 1000);  // nothing sealed: 0
  EXPECT_EQ(n.value(), 0u);
}

TEST(SealRegistry, FullRegistryRefusesNewRangesAndSplitsCleanly) {
  auto r = std::make_unique<s::SealRegistry>();
  for (size_t i = 0; i < s::SealRegistry::kMaxRanges; i++)
    ASSERT_FALSE(r->insert(i * 10, 5).is_error());
  auto e = r->insert(1000000, 1);
  ASSERT_TRUE(e.is_error());
  EXPECT_EQ(e.error(), Error::LimitReached);
  // Adjacent to an existing range needs no slot.
  EXPECT_FALSE(r->insert(5, 1).is_error());
  // Splitting a range needs one: refused, nothing changes.
  uint64_t before = r->sealed_pages();
  auto s2 = r->remove(21, 2);
  ASSERT_TRUE(s2.is_error());
  EXPECT_EQ(s2.error(), Error::LimitReached);
  EXPECT_EQ(r->sealed_pages(), before);
  // Removing a whole range frees a slot.
  EXPECT_EQ(r->remove(30, 5).value(), 5u);
  EXPECT_FALSE(r->remove(21, 2).is_error());
}

TEST(SealRegistry, RandomOperationsMatchAReferenceSet) {
  auto r = std::make_unique<s::SealRegistry>();
  std::set<uint64_t> ref;
  uint64_t x = 12345;
  auto rnd = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  for (int op = 0; op < 20000; op++) {
    uint64_t pfn = rnd() % 2000, pages = 1 + rnd() % 40;
    if (rnd() % 2) {
      bool overlaps = false;
      for (uint64_t p = pfn; p < pfn + pages; p++) overlaps |= ref.count(p) > 0;
      auto res = r->insert(pfn, pages);
      if (overlaps) {
        ASSERT_TRUE(res.is_error());
      } else if (!res.is_error()) {
        for (uint64_t p = pfn; p < pfn + pages; p++) ref.insert(p);
      }
    } else {
      uint64_t expect = 0;
      for (uint64_t p = pfn; p < pfn + pages; p++) expect += ref.count(p);
      auto res = r->remove(pfn, pages);
      if (!res.is_error()) {
        ASSERT_EQ(res.value(), expect);
        for (uint64_t p = pfn; p < pfn + pages; p++) ref.erase(p);
      }
    }
    ASSERT_EQ(r->sealed_pages(), ref.size());
    for (size_t i = 1; i < r->range_count(); i++)
      ASSERT_LT(r->range(i - 1).pfn + r->range(i - 1).pages, r->range(i).pfn);  // sorted, gaps
  }
  for (uint64_t p = 0; p < 2100; p++) ASSERT_EQ(r->contains(p), ref.count(p) > 0) << p;
}
