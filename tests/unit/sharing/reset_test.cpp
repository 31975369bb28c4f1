// What sharing needs to hint everything again after a balloon device reset: a twin table that
// forgets (else every re-hinted page would be its own twin) and a batcher whose ENOSPC no longer
// holds once the device forgot its hints.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "mm/sharing/hint_batch.h"
#include "mm/sharing/twin_table.h"

namespace s = blimp::mm::sharing;
namespace b = blimp::wire;
using blimp::ErrorOr;
using blimp::wire::BlimpResponse;
using blimp::wire::BlimpSealEntry;

namespace {

TEST(sharing_reset, TwinTableClearForgetsEveryHash) {
  std::vector<s::TwinTable::Slot> slots(64);
  s::TwinTable t;
  t.init(slots.data(), slots.size());
  uint64_t first = 0;
  EXPECT_EQ(t.add(7, 100, first), s::TwinTable::Seen::First);
  EXPECT_EQ(t.add(7, 101, first), s::TwinTable::Seen::Second);
  EXPECT_EQ(first, 100u);
  EXPECT_EQ(t.add(9, 102, first), s::TwinTable::Seen::First);
  t.clear();
  EXPECT_EQ(t.size(), 0u);
  EXPECT_EQ(t.capacity(), 64u);
  EXPECT_EQ(t.count(7), 0u);
  // Hinting the same pages again gives the same answers as the first time.
  EXPECT_EQ(t.add(7, 100, first), s::TwinTable::Seen::First);
  EXPECT_EQ(t.add(7, 101, first), s::TwinTable::Seen::Second);
  EXPECT_EQ(t.add(9, 102, first), s::TwinTable::Seen::First);
}

struct Device {
  uint64_t room;  // entries the device records before ENOSPC
  std::vector<BlimpSealEntry> seals;
  static ErrorOr<BlimpResponse> send(uint16_t type, const void* entries, uint32_t count, size_t,
                                     void* ctx) {
    auto* d = static_cast<Device*>(ctx);
    EXPECT_EQ(type, b::kBlimpSeal);
    BlimpResponse r{b::kBlimpOk, 0, 0, 0};
    auto* e = static_cast<const BlimpSealEntry*>(entries);
    for (uint32_t i = 0; i < count; i++) {
      if (d->seals.size() >= d->room) {
        r.status = b::kBlimpEnospc;
        r.rejected++;
      } else {
        d->seals.push_back(e[i]);
        r.accepted++;
      }
    }
    return r;
  }
};

TEST(sharing_reset, BatcherSendsAgainAfterDeviceResetLiftsEnospc) {
  Device dev{2, {}};
  BlimpSealEntry buf[8];
  s::SealBatcher batch(buf, 8, Device::send, &dev);
  for (uint64_t p = 0; p < 6; p += 2) batch.add(p, p + 1, false);
  batch.flush();
  EXPECT_TRUE(batch.stats().limit_reached);
  // The device is reset: it forgot its hints (and has room again).
  dev.seals.clear();
  dev.room = 100;
  batch.device_reset();
  EXPECT_FALSE(batch.stats().limit_reached);
  for (uint64_t p = 0; p < 6; p += 2) batch.add(p, p + 1, false);
  batch.flush();
  EXPECT_FALSE(batch.stats().limit_reached);
  EXPECT_EQ(dev.seals.size(), 3u);
}

}  // namespace
