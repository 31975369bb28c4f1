// Hint batching and run merging against a fake blimpq device that validates requests the way
// the patched QEMU does (spec section 5.5) and records every entry.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "mm/sharing/hint_batch.h"

namespace s = blimp::mm::sharing;
using blimp::Error;
using blimp::ErrorOr;
using blimp::wire::BlimpResponse;
using blimp::wire::BlimpSealEntry;
using blimp::wire::BlimpUnsealEntry;
namespace b = blimp::wire;

namespace {

struct FakeDevice {
  std::vector<uint32_t> request_sizes;
  std::vector<BlimpSealEntry> seals;
  std::vector<BlimpUnsealEntry> unseals;
  uint64_t max_entries = ~0ull;  // ENOSPC beyond this many recorded seal entries
  int busy_answers = 0;          // answer Busy this many times first
  bool fail = false;
  int timeouts = 0;  // answer Timeout this many times (after the Busy answers)
  // A device that timed out still owns the buffer: on a Timeout the fake fills these bytes (the
  // test's whole entry buffer) with kCanary, so any later write by the batcher shows.
  void* canary = nullptr;
  size_t canary_bytes = 0;
  static constexpr unsigned char kCanary = 0xa5;

  static ErrorOr<BlimpResponse> send(uint16_t type, const void* entries, uint32_t count,
                                     size_t entry_size, void* ctx) {
    auto* d = static_cast<FakeDevice*>(ctx);
    if (d->busy_answers > 0) {
      d->busy_answers--;
      return Error::Busy;
    }
    if (d->timeouts > 0) {
      d->timeouts--;
      if (d->canary) std::memset(d->canary, kCanary, d->canary_bytes);
      return Error::Timeout;
    }
    if (d->fail) return Error::DeviceError;
    if (count < 1 || count > b::kBlimpMaxEntries)
      return BlimpResponse{b::kBlimpEinval, 0, count, 0};
    d->request_sizes.push_back(count);
    BlimpResponse r{b::kBlimpOk, 0, 0, 0};
    if (type == b::kBlimpSeal) {
      EXPECT_EQ(entry_size, sizeof(BlimpSealEntry));
      auto* e = static_cast<const BlimpSealEntry*>(entries);
      for (uint32_t i = 0; i < count; i++) {
        if (e[i].npages == 0 || (e[i].flags & ~(b::kBlimpSealZero | b::kBlimpSealWritable))) {
          r.rejected++;
          if (r.status == b::kBlimpOk) r.status = b::kBlimpEinval;
        } else if (d->seals.size() >= d->max_entries) {
          r.rejected++;
          if (r.status == b::kBlimpOk) r.status = b::kBlimpEnospc;
        } else {
          d->seals.push_back(e[i]);
          r.accepted++;
        }
      }
    } else if (type == b::kBlimpUnseal) {
      EXPECT_EQ(entry_size, sizeof(BlimpUnsealEntry));
      auto* e = static_cast<const BlimpUnsealEntry*>(entries);
      for (uint32_t i = 0; i < count; i++) {
        EXPECT_EQ(e[i].reserved, 0u);
        d->unseals.push_back(e[i]);
        r.accepted++;
      }
    } else {
      return BlimpResponse{b::kBlimpEunsupp, 0, count, 0};
    }
    return r;
  }
};

}  // namespace

TEST(SealBatcher, MergesRunsOfIdenticalAdjacentPagesOnly) {
  FakeDevice dev;
  std::vector<BlimpSealEntry> buf(16);
  s::SealBatcher batch(buf.data(), 16, FakeDevice::send, &dev);
  // 10..13 zero, 14 different, 15..16 same hash but not zero, 20 same hash (gap).
  for (uint64_t p = 10; p < 14; p++) batch.add(p, 0xaaaa, true);
  batch.add(14, 0xbbbb, false);
  batch.add(15, 0xcccc, false);
  batch.add(16, 0xcccc, false);
  batch.add(20, 0xcccc, false);
  batch.add(21, 0xaaaa, false);  // same hash as the zero run but no ZERO flag: new entry
  EXPECT_EQ(batch.pending(), 5u);
  ASSERT_TRUE(batch.flush());
  ASSERT_EQ(dev.seals.size(), 5u);
  EXPECT_EQ(dev.seals[0].pfn, 10u);
  EXPECT_EQ(dev.seals[0].npages, 4u);
  EXPECT_EQ(dev.seals[0].flags, b::kBlimpSealZero);
  EXPECT_EQ(dev.seals[0].hash, 0xaaaau);
  EXPECT_EQ(dev.seals[1].npages, 1u);
  EXPECT_EQ(dev.seals[2].pfn, 15u);
  EXPECT_EQ(dev.seals[2].npages, 2u);
  EXPECT_EQ(dev.seals[3].pfn, 20u);
  EXPECT_EQ(dev.seals[4].flags, 0u);
  const auto& st = batch.stats();
  EXPECT_EQ(st.requests, 1u);
  EXPECT_EQ(st.entries, 5u);
  EXPECT_EQ(st.pages, 9u);
  EXPECT_EQ(st.zero_pages, 4u);
  EXPECT_EQ(st.accepted, 5u);
}

TEST(SealBatcher, CandidatesAreWritableAndNeverMergeWithSealedRuns) {
  FakeDevice dev;
  std::vector<BlimpSealEntry> buf(16);
  s::SealBatcher batch(buf.data(), 16, FakeDevice::send, &dev);
  // 0..1: sealed zero pages; 2..4: zero candidates (same hash, adjacent, but WRITABLE: a new
  // run); 5: a non-zero candidate; 6: sealed again with the candidate's hash: a new run.
  batch.add(0, 0x93d7, true);
  batch.add(1, 0x93d7, true);
  for (uint64_t p = 2; p < 5; p++) batch.add_candidate(p, 0x93d7, true);
  batch.add_candidate(5, 0x1234, false);
  batch.add(6, 0x1234, false);
  ASSERT_TRUE(batch.flush());
  ASSERT_EQ(dev.seals.size(), 4u);
  EXPECT_EQ(dev.seals[0].npages, 2u);
  EXPECT_EQ(dev.seals[0].flags, b::kBlimpSealZero);
  EXPECT_EQ(dev.seals[1].pfn, 2u);
  EXPECT_EQ(dev.seals[1].npages, 3u);
  EXPECT_EQ(dev.seals[1].flags, b::kBlimpSealZero | b::kBlimpSealWritable);
  EXPECT_EQ(dev.seals[2].pfn, 5u);
  EXPECT_EQ(dev.seals[2].flags, b::kBlimpSealWritable);
  EXPECT_EQ(dev.seals[3].pfn, 6u);
  EXPECT_EQ(dev.seals[3].flags, 0u);
  const auto& st = batch.stats();
  EXPECT_EQ(st.pages, 7u);
  EXPECT_EQ(st.zero_pages, 5u);
  EXPECT_EQ(st.writable_pages, 4u);
  EXPECT_EQ(st.rejected, 0u);
}

TEST(SealBatcher, SendsFullBatchesOfAtMost4096Entries) {
  FakeDevice dev;
  std::vector<BlimpSealEntry> buf(b::kBlimpMaxEntries);
  // Capacity above the protocol's limit is clamped to 4096.
  s::SealBatcher batch(buf.data(), 100000, FakeDevice::send, &dev);
  const uint64_t n = 10000;
  for (uint64_t p = 0; p < n; p++) batch.add(1000 + p, p * 0x9e3779b97f4a7c15ull + 1, false);
  ASSERT_TRUE(batch.flush());
  ASSERT_EQ(dev.request_sizes.size(), 3u);
  EXPECT_EQ(dev.request_sizes[0], 4096u);
  EXPECT_EQ(dev.request_sizes[1], 4096u);
  EXPECT_EQ(dev.request_sizes[2], n - 8192);
  ASSERT_EQ(dev.seals.size(), n);
  for (uint64_t p = 0; p < n; p++) ASSERT_EQ(dev.seals[p].pfn, 1000 + p);
  EXPECT_EQ(batch.stats().pages, n);
  EXPECT_EQ(batch.pending(), 0u);
  EXPECT_TRUE(batch.flush());  // nothing pending: no request
  EXPECT_EQ(dev.request_sizes.size(), 3u);
}

TEST(SealBatcher, AMillionZeroPagesAreOneEntry) {
  FakeDevice dev;
  BlimpSealEntry buf[4];
  s::SealBatcher batch(buf, 4, FakeDevice::send, &dev);
  for (uint64_t p = 0; p < 1000000; p++) batch.add(p, 7, true);
  ASSERT_TRUE(batch.flush());
  ASSERT_EQ(dev.seals.size(), 1u);
  EXPECT_EQ(dev.seals[0].npages, 1000000u);
}

TEST(SealBatcher, EnospcStopsFurtherSealsAndCountsDroppedPages) {
  FakeDevice dev;
  dev.max_entries = 5;
  BlimpSealEntry buf[4];
  s::SealBatcher batch(buf, 4, FakeDevice::send, &dev);
  for (uint64_t p = 0; p < 12; p += 2) batch.add(p, p, false);  // 6 disjoint entries
  batch.flush();
  EXPECT_TRUE(batch.stats().limit_reached);
  EXPECT_EQ(dev.seals.size(), 5u);
  EXPECT_EQ(batch.stats().rejected, 1u);
  EXPECT_EQ(batch.stats().last_status, b::kBlimpEnospc);
  size_t requests = dev.request_sizes.size();
  batch.add(100, 1, false, 3);
  batch.flush();
  EXPECT_EQ(dev.request_sizes.size(), requests);  // nothing more sent
  EXPECT_EQ(batch.stats().dropped_pages, 3u);
}

TEST(SealBatcher, RetriesWhileBusyAndCountsFailures) {
  FakeDevice dev;
  dev.busy_answers = 10;
  BlimpSealEntry buf[4];
  s::SealBatcher batch(buf, 4, FakeDevice::send, &dev);
  batch.add(1, 1, false);
  EXPECT_TRUE(batch.flush());
  EXPECT_EQ(dev.seals.size(), 1u);
  dev.fail = true;
  batch.add(2, 2, false, 5);
  EXPECT_FALSE(batch.flush());
  EXPECT_EQ(batch.stats().send_errors, 1u);
  EXPECT_EQ(batch.stats().dropped_pages, 5u);
}

namespace {
bool all_zero(const void* p, size_t bytes) {
  auto* c = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < bytes; i++)
    if (c[i]) return false;
  return true;
}
}  // namespace

TEST(SealBatcher, ZeroesTheEntriesTheDeviceAnsweredAndKeepsUnansweredOnes) {
  FakeDevice dev;
  BlimpSealEntry buf[4] = {};
  s::SealBatcher batch(buf, 4, FakeDevice::send, &dev);
  for (uint64_t p = 0; p < 6; p++) batch.add(10 + 2 * p, 0x1234 + p, false);  // 6 disjoint
  ASSERT_TRUE(batch.flush());  // a full batch of 4, then 2
  ASSERT_EQ(dev.seals.size(), 6u);
  EXPECT_EQ(dev.seals[5].pfn, 20u);  // the device saw the entries before they were cleared
  EXPECT_EQ(dev.seals[5].hash, 0x1239u);
  EXPECT_TRUE(all_zero(buf, sizeof buf));
  // No answer: the device may still read them, so they stay.
  dev.fail = true;
  batch.add(50, 0x77, false);
  EXPECT_FALSE(batch.flush());
  EXPECT_EQ(buf[0].pfn, 50u);
  EXPECT_EQ(buf[0].hash, 0x77u);
}

TEST(UnsealBatcher, ZeroesTheEntriesTheDeviceAnswered) {
  FakeDevice dev;
  BlimpUnsealEntry buf[2] = {};
  s::UnsealBatcher batch(buf, 2, FakeDevice::send, &dev);
  batch.add(100, 4);
  batch.add(200, 1);
  batch.add(300, 2);
  ASSERT_TRUE(batch.flush());
  ASSERT_EQ(dev.unseals.size(), 3u);
  EXPECT_EQ(dev.unseals[2].pfn, 300u);
  EXPECT_TRUE(all_zero(buf, sizeof buf));
}

TEST(UnsealBatcher, MergesAdjacentAndOverlappingRuns) {
  FakeDevice dev;
  BlimpUnsealEntry buf[8];
  s::UnsealBatcher batch(buf, 8, FakeDevice::send, &dev);
  batch.add(100, 4);  // 100..103
  batch.add(104, 2);  // adjacent: 100..105
  batch.add(103, 5);  // overlapping: 100..107
  batch.add(200, 1);  // gap: new entry
  batch.add(50, 1);   // below: new entry (no reordering)
  ASSERT_TRUE(batch.flush());
  ASSERT_EQ(dev.unseals.size(), 3u);
  EXPECT_EQ(dev.unseals[0].pfn, 100u);
  EXPECT_EQ(dev.unseals[0].npages, 8u);
  EXPECT_EQ(dev.unseals[1].pfn, 200u);
  EXPECT_EQ(dev.unseals[2].pfn, 50u);
  EXPECT_EQ(batch.stats().pages, 10u);
}

TEST(UnsealBatcher, FlushesWhenFull) {
  FakeDevice dev;
  BlimpUnsealEntry buf[2];
  s::UnsealBatcher batch(buf, 2, FakeDevice::send, &dev);
  for (uint64_t p = 0; p < 5; p++) batch.add(p * 10, 1);
  ASSERT_TRUE(batch.flush());
  EXPECT_EQ(dev.request_sizes, (std::vector<uint32_t>{2, 2, 1}));
  EXPECT_EQ(dev.unseals.size(), 5u);
}

namespace {
bool all_canary(const void* p, size_t bytes) {
  auto* c = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < bytes; i++)
    if (c[i] != FakeDevice::kCanary) return false;
  return true;
}
}  // namespace

TEST(SealBatcher, TimeoutWedgesTheBufferUntilADeviceReset) {
  FakeDevice dev;
  BlimpSealEntry buf[4] = {};
  dev.canary = buf;
  dev.canary_bytes = sizeof buf;
  s::SealBatcher batch(buf, 4, FakeDevice::send, &dev);
  batch.add(10, 0x10, false, 3);
  batch.add(20, 0x20, true, 2);
  dev.timeouts = 1;
  EXPECT_FALSE(batch.flush());
  EXPECT_TRUE(batch.stats().wedged);
  EXPECT_FALSE(batch.accepting());
  EXPECT_EQ(batch.stats().send_errors, 1u);
  EXPECT_EQ(batch.stats().dropped_pages, 5u);
  // More than a buffer's worth of disjoint entries, merges and candidates: before, the first of
  // them went into buf[0] while the device might still be reading the request.
  for (uint64_t p = 0; p < 10; p++) batch.add(100 + 2 * p, p, false);
  batch.add(121, 7, false, 4);
  batch.add_candidate(200, 0x93d7, true, 6);
  EXPECT_EQ(batch.pending(), 0u);
  EXPECT_TRUE(batch.flush());  // nothing pending, nothing sent
  EXPECT_TRUE(all_canary(buf, sizeof buf));
  EXPECT_TRUE(dev.request_sizes.empty());
  EXPECT_EQ(batch.stats().send_errors, 1u);
  EXPECT_EQ(batch.stats().dropped_pages, 5u + 10 + 4 + 6);
  EXPECT_EQ(batch.stats().pages, 0u);
  // A completed reset took the buffer back: hints flow again.
  batch.device_reset();
  EXPECT_FALSE(batch.stats().wedged);
  EXPECT_TRUE(batch.accepting());
  batch.add(300, 0x300, false, 2);
  EXPECT_TRUE(batch.flush());
  ASSERT_EQ(dev.seals.size(), 1u);
  EXPECT_EQ(dev.seals[0].pfn, 300u);
  EXPECT_EQ(dev.seals[0].npages, 2u);
  EXPECT_EQ(batch.stats().pages, 2u);
  EXPECT_EQ(batch.stats().dropped_pages, 25u);
}

TEST(SealBatcher, TimeoutOfTheFlushOfAFullBufferDropsThePageThatWaited) {
  FakeDevice dev;
  BlimpSealEntry buf[2] = {};
  dev.canary = buf;
  dev.canary_bytes = sizeof buf;
  s::SealBatcher batch(buf, 2, FakeDevice::send, &dev);
  batch.add(10, 1, false);
  batch.add(20, 2, false);
  dev.timeouts = 1;
  batch.add(30, 3, false, 4);  // the buffer is full: add() flushes first, and that times out
  EXPECT_TRUE(batch.stats().wedged);
  EXPECT_EQ(batch.pending(), 0u);
  EXPECT_TRUE(all_canary(buf, sizeof buf));
  EXPECT_EQ(batch.stats().dropped_pages, 2u + 4);
}

TEST(SealBatcher, DeviceErrorDoesNotWedge) {
  // The device was reset and forgot the request: it reads the buffer no more, so it is reused.
  FakeDevice dev;
  BlimpSealEntry buf[4] = {};
  s::SealBatcher batch(buf, 4, FakeDevice::send, &dev);
  dev.fail = true;
  batch.add(10, 1, false, 3);
  EXPECT_FALSE(batch.flush());
  EXPECT_FALSE(batch.stats().wedged);
  dev.fail = false;
  batch.add(20, 2, false);
  EXPECT_TRUE(batch.flush());
  ASSERT_EQ(dev.seals.size(), 1u);
  EXPECT_EQ(dev.seals[0].pfn, 20u);
  EXPECT_EQ(batch.stats().dropped_pages, 3u);
}

TEST(UnsealBatcher, TimeoutWedgesTheBufferUntilADeviceReset) {
  FakeDevice dev;
  BlimpUnsealEntry buf[2] = {};
  dev.canary = buf;
  dev.canary_bytes = sizeof buf;
  s::UnsealBatcher batch(buf, 2, FakeDevice::send, &dev);
  batch.add(100, 4);
  batch.add(200, 1);
  dev.timeouts = 1;
  batch.add(300, 2);  // full: the flush times out, and the new run is dropped with it
  EXPECT_TRUE(batch.stats().wedged);
  EXPECT_EQ(batch.stats().dropped_pages, 4u + 1 + 2);
  batch.add(302, 3);  // would merge with the dropped run's entry if it had been written
  batch.add(400, 1);
  batch.add(500, 6);
  EXPECT_TRUE(batch.flush());
  EXPECT_EQ(batch.pending(), 0u);
  EXPECT_TRUE(all_canary(buf, sizeof buf));
  EXPECT_TRUE(dev.request_sizes.empty());
  EXPECT_EQ(batch.stats().send_errors, 1u);
  EXPECT_EQ(batch.stats().dropped_pages, 7u + 3 + 1 + 6);
  batch.device_reset();
  EXPECT_FALSE(batch.stats().wedged);
  batch.add(600, 2);
  EXPECT_TRUE(batch.flush());
  ASSERT_EQ(dev.unseals.size(), 1u);
  EXPECT_EQ(dev.unseals[0].pfn, 600u);
  EXPECT_EQ(batch.stats().pages, 2u);
}
