#include <gtest/gtest.h>

#include "sharing_index.h"

using namespace hangar;

namespace {
Hint h(uint64_t pfn, uint64_t n, uint64_t hash) { return Hint{{pfn, n}, hash, false}; }
}  // namespace

TEST(SharingIndex, TwinsAcrossVms) {
  SharingIndex idx;
  idx.ingest("a", {h(100, 1, 0xAA), h(200, 1, 0xBB), h(300, 1, 0xCC)});
  idx.ingest("b", {h(500, 1, 0xAA), h(600, 1, 0xDD)});
  EXPECT_EQ(idx.twins("a", ShareScope::AcrossVms), (std::set<uint64_t>{0xAA}));
  EXPECT_EQ(idx.twins("b", ShareScope::AcrossVms), (std::set<uint64_t>{0xAA}));
  EXPECT_TRUE(idx.twins("a", ShareScope::WithinVm).empty());
  EXPECT_TRUE(idx.twins("a", ShareScope::Off).empty());
  EXPECT_EQ(idx.runs_to_mark("a", ShareScope::AcrossVms), (std::vector<PageRun>{{100, 1}}));
  EXPECT_EQ(idx.potential_savings(ShareScope::AcrossVms), 1u);
}

TEST(SharingIndex, WithinVmRunsOfIdenticalPages) {
  SharingIndex idx;
  idx.ingest("a", {h(0, 64, 0x0), h(100, 1, 0x5), h(200, 1, 0x5), h(300, 1, 0x6)});
  EXPECT_EQ(idx.twins("a", ShareScope::WithinVm), (std::set<uint64_t>{0x0, 0x5}));
  EXPECT_EQ(idx.potential_savings(ShareScope::WithinVm), 63u + 1u);
}

TEST(SharingIndex, RunsMergeAndBridgeGaps) {
  SharingIndex idx;
  idx.ingest("a", {h(10, 2, 1), h(12, 3, 1), h(20, 1, 1), h(100, 1, 1), h(50, 1, 9)});
  idx.ingest("b", {h(0, 1, 1)});
  EXPECT_EQ(idx.runs_to_mark("a", ShareScope::AcrossVms, 0),
            (std::vector<PageRun>{{10, 5}, {20, 1}, {100, 1}}));
  EXPECT_EQ(idx.runs_to_mark("a", ShareScope::AcrossVms, 16),
            (std::vector<PageRun>{{10, 11}, {100, 1}}));
}

TEST(SharingIndex, UnsealAndReplaceUpdateTwins) {
  SharingIndex idx;
  idx.ingest("a", {h(100, 4, 0xAA)});
  idx.ingest("b", {h(100, 1, 0xAA)});
  ASSERT_EQ(idx.twins("b", ShareScope::AcrossVms).size(), 1u);
  idx.unseal("a", {102, 1});  // overlaps the run: the whole hint goes
  EXPECT_EQ(idx.hint_count("a"), 0u);
  EXPECT_TRUE(idx.twins("b", ShareScope::AcrossVms).empty());
  idx.ingest("a", {h(7, 1, 0xAA)});
  EXPECT_EQ(idx.twins("b", ShareScope::AcrossVms).size(), 1u);
  idx.replace("a", {h(8, 1, 0xBB)});
  EXPECT_TRUE(idx.twins("b", ShareScope::AcrossVms).empty());
  idx.forget("a");
  EXPECT_EQ(idx.vm_count(), 1u);
}

TEST(SharingIndex, OverlappingSealReplaces) {
  SharingIndex idx;
  idx.ingest("a", {h(10, 10, 0x1)});
  idx.ingest("a", {h(15, 1, 0x2)});
  EXPECT_EQ(idx.hint_count("a"), 1u);
  EXPECT_EQ(idx.hinted_pages("a"), 1u);
  idx.ingest("a", {h(0, 0, 0x3)});  // empty run: ignored
  EXPECT_EQ(idx.hint_count("a"), 1u);
}

TEST(SharingIndex, HashHex) {
  EXPECT_EQ(SharingIndex::hash_hex(0x9c2d1e0f00aa7b31ull), "9c2d1e0f00aa7b31");
  EXPECT_EQ(*SharingIndex::parse_hash("0000000000000001"), 1u);
  EXPECT_FALSE(SharingIndex::parse_hash("123"));
  EXPECT_FALSE(SharingIndex::parse_hash("9C2D1E0F00AA7B31"));
  EXPECT_FALSE(SharingIndex::parse_hash("zzzzzzzzzzzzzzzz"));
}

#include "error_text.h"
#include "sharing_qmp.h"

TEST(SharingQmp, ParsesHintPages) {
  auto page = parse_hints_page(nlohmann::json::parse(R"({"total": 5120, "hints": [
        {"pfn": 4096, "npages": 1, "hash": "9c2d1e0f00aa7b31", "zero": false, "marked": true},
        {"pfn": 8192, "npages": 64, "hash": "c1f7d4e1d7b1a8a0", "zero": true, "marked": true}]})"));
  ASSERT_TRUE(page) << error_text(page);
  EXPECT_EQ(page->total, 5120u);
  ASSERT_EQ(page->hints.size(), 2u);
  EXPECT_EQ(page->hints[1].run, (PageRun{8192, 64}));
  EXPECT_EQ(page->hints[0].hash, 0x9c2d1e0f00aa7b31ull);
  EXPECT_TRUE(page->hints[1].zero);
  for (const char* bad :
       {R"({"hints": []})", R"({"total": 1, "hints": [{"pfn": 1, "npages": 1, "hash": 5}]})",
        R"({"total": 1, "hints": [{"pfn": 1, "npages": 1, "hash": "xyz"}]})", "[]"})
    EXPECT_FALSE(parse_hints_page(nlohmann::json::parse(bad))) << bad;
}

TEST(SharingQmp, FilterArguments) {
  EXPECT_EQ(hint_filter_args(std::nullopt), nlohmann::json::object());
  EXPECT_EQ(hint_filter_args(std::set<uint64_t>{}), nlohmann::json::parse(R"({"hashes": []})"));
  EXPECT_EQ(hint_filter_args(std::set<uint64_t>{1, 0xabc}),
            nlohmann::json::parse(R"({"hashes": ["0000000000000001", "0000000000000abc"]})"));
  EXPECT_EQ(query_hints_args(7)["start"], 7);
}
