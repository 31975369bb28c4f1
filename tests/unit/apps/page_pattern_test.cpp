// apps/page_pattern.h: what integrity and memhog rely on to call a page good, stale, zeroed or
// foreign.
#include "apps/page_pattern.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>

namespace {

using namespace blimp::apps::pattern;

constexpr uint64_t kSalt = 0x1234;

struct Page {
  alignas(4096) uint64_t w[kWordsPerPage];
};

TEST(PagePattern, DecodeInvertsEncode) {
  for (uint64_t where : {0ull, 1ull, 77ull, 0xfffffull})
    for (uint64_t gen : {1ull, 2ull, 1000ull, ~0ull})
      for (unsigned i : {0u, 1u, 255u, 511u}) {
        uint64_t key = page_key(kSalt, where);
        EXPECT_EQ(decode(key, i, encode(key, i, gen)), gen);
      }
}

TEST(PagePattern, FreshPageChecksOk) {
  Page p;
  uint64_t key = page_key(kSalt, 5);
  fill_page(p.w, key, 42);
  PageCheck c = check_page(p.w, key, 42, 43);
  EXPECT_EQ(c.verdict, Verdict::kOk);
  EXPECT_EQ(c.bad_words, 0u);
}

TEST(PagePattern, EarlierGenerationIsStaleAndDecoded) {
  Page p;
  uint64_t key = page_key(kSalt, 5);
  fill_page(p.w, key, 41);  // the host gave back an old copy
  PageCheck c = check_page(p.w, key, 42, 43);
  EXPECT_EQ(c.verdict, Verdict::kStale);
  EXPECT_EQ(c.bad_words, kWordsPerPage);  // every word differs, not just a tag
  EXPECT_EQ(c.found_generation, 41u);
  EXPECT_EQ(c.first_bad, 0u);
}

TEST(PagePattern, AdjacentGenerationsDifferInEveryWord) {
  uint64_t key = page_key(kSalt, 9);
  for (unsigned i = 0; i < kWordsPerPage; i++) EXPECT_NE(encode(key, i, 1), encode(key, i, 2));
}

TEST(PagePattern, PartlyStalePageCountsOnlyTheOldWords) {
  Page p;
  uint64_t key = page_key(kSalt, 5);
  fill_page(p.w, key, 7);
  fill_page(p.w, key, 9, 100);  // a torn write: the first 100 words of the newer fill
  PageCheck c = check_page(p.w, key, 9, 10);
  EXPECT_EQ(c.verdict, Verdict::kStale);
  EXPECT_EQ(c.bad_words, kWordsPerPage - 100);
  EXPECT_EQ(c.first_bad, 100u);
  EXPECT_EQ(c.found_generation, 7u);
}

TEST(PagePattern, ZeroPageIsZeroedNotValid) {
  Page p;
  memset(p.w, 0, sizeof p.w);
  for (uint64_t where = 0; where < 64; where++)
    for (uint64_t gen = 1; gen < 64; gen++) {
      PageCheck c = check_page(p.w, page_key(kSalt, where), gen, 64);
      ASSERT_EQ(c.verdict, Verdict::kZeroed);
      ASSERT_EQ(c.bad_words, kWordsPerPage);
    }
}

TEST(PagePattern, AnotherPagesContentIsForeignEvenAtTheSameGeneration) {
  Page p;
  fill_page(p.w, page_key(kSalt, 6), 42);
  PageCheck c = check_page(p.w, page_key(kSalt, 5), 42, 1000);
  EXPECT_EQ(c.verdict, Verdict::kForeign);
  EXPECT_EQ(c.bad_words, kWordsPerPage);
}

TEST(PagePattern, AnotherAppsContentIsForeign) {
  Page p;
  fill_page(p.w, page_key(kSalt + 1, 5), 42);
  EXPECT_EQ(check_page(p.w, page_key(kSalt, 5), 42, 1000).verdict, Verdict::kForeign);
}

TEST(PagePattern, FutureOrZeroGenerationIsForeign) {
  Page p;
  uint64_t key = page_key(kSalt, 5);
  fill_page(p.w, key, 50);  // decodes consistently, but to a generation never handed out
  EXPECT_EQ(check_page(p.w, key, 42, 43).verdict, Verdict::kForeign);
  fill_page(p.w, key, 0);
  EXPECT_EQ(check_page(p.w, key, 42, 43).verdict, Verdict::kForeign);
}

TEST(PagePattern, SingleFlippedBitIsOneBadWord) {
  Page p;
  uint64_t key = page_key(kSalt, 5);
  fill_page(p.w, key, 3);
  p.w[300] ^= 1ull << 17;
  PageCheck c = check_page(p.w, key, 3, 4);
  EXPECT_NE(c.verdict, Verdict::kOk);
  EXPECT_EQ(c.bad_words, 1u);
  EXPECT_EQ(c.first_bad, 300u);
}

TEST(PagePattern, ShiftedContentIsForeign) {
  Page p, q;
  uint64_t key = page_key(kSalt, 5);
  fill_page(p.w, key, 3);
  memcpy(q.w + 1, p.w, sizeof p.w - 8);  // copied one word off
  q.w[0] = p.w[0];
  PageCheck c = check_page(q.w, key, 3, 4);
  EXPECT_EQ(c.verdict, Verdict::kForeign);
  EXPECT_EQ(c.bad_words, kWordsPerPage - 1);
}

TEST(PagePattern, NoTwoPagesOrGenerationsShareAWord0) {
  // Word 0 of 4096 pages x 16 generations: all distinct, so no page of one (place, fill) can
  // pass for another.
  std::set<uint64_t> seen;
  for (uint64_t where = 0; where < 4096; where++)
    for (uint64_t gen = 1; gen <= 16; gen++)
      ASSERT_TRUE(seen.insert(encode(page_key(kSalt, where), 0, gen)).second);
}

TEST(PagePattern, PartialWidthChecksOnlyThoseWords) {
  Page p;
  uint64_t key = page_key(kSalt, 5);
  memset(p.w, 0xab, sizeof p.w);
  fill_page(p.w, key, 8, 1);  // memhog verify=word: one tag word
  EXPECT_EQ(check_page(p.w, key, 8, 9, 1).verdict, Verdict::kOk);
  EXPECT_EQ(check_page(p.w, key, 7, 9, 1).verdict, Verdict::kStale);
}

}  // namespace
