// virtio-balloon wire protocol constants: virtio 1.2, section 5.5 "Memory Balloon Device", plus
// the statistics tags Linux added after it (include/uapi/linux/virtio_balloon.h, tags 10-15).
#pragma once

#include <cstdint>

#include "lib/blimp_wire.h"

namespace blimp::balloon {

constexpr uint16_t kDeviceId = 5;

// 5.5.3 Feature bits.
constexpr unsigned kFeatureMustTellHost = 0;
constexpr unsigned kFeatureStatsVq = 1;
constexpr unsigned kFeatureDeflateOnOom = 2;
constexpr unsigned kFeatureFreePageHint = 3;
constexpr unsigned kFeaturePagePoison = 4;
constexpr unsigned kFeaturePageReporting = 5;

// Blimp extensions (docs/spec-virtio-balloon-blimp.md): the wire types live in lib/blimp_wire.h,
// below both this driver and mm (page states, sharing), which fill the requests.
using wire::BlimpRequest;
using wire::BlimpStatus;
using wire::kFeatureBlimpPageStates;
using wire::kFeatureBlimpShareHints;
using enum wire::BlimpRequest;
using enum wire::BlimpStatus;
using wire::blimp_status_name;
using wire::BlimpPstateRegister;
using wire::BlimpRequestHeader;
using wire::BlimpResponse;
using wire::BlimpSealEntry;
using wire::BlimpUnsealEntry;
using wire::kBlimpMaxEntries;
using wire::kBlimpSealZero;

// 5.5.4 Device configuration layout (little-endian; legacy devices use guest endianness, which on
// x86 is the same).
constexpr uint32_t kConfigNumPages = 0;  // target balloon size in 4 KiB pages (device writes)
constexpr uint32_t kConfigActual = 4;    // current balloon size (driver writes)
constexpr uint32_t kConfigFreePageHintCmdId = 8;
constexpr uint32_t kConfigPoisonVal = 12;

// 5.5.6.4 Free page hinting command ids.
constexpr uint32_t kCmdIdStop = 0;
constexpr uint32_t kCmdIdDone = 1;

// The balloon always speaks in 4 KiB pages (5.5.6: "page" means 4096 bytes), whatever the guest's
// page size.
constexpr unsigned kBalloonPageShift = 12;

// 5.5.6.3 Memory statistics tags.
enum StatTag : uint16_t {
  kStatSwapIn = 0,
  kStatSwapOut = 1,
  kStatMajorFaults = 2,
  kStatMinorFaults = 3,
  kStatFreeMemory = 4,
  kStatTotalMemory = 5,
  kStatAvailableMemory = 6,
  kStatDiskCaches = 7,
  kStatHugetlbAllocations = 8,
  kStatHugetlbFailures = 9,
  // Linux extensions (not in virtio 1.2; QEMU 7.2 ignores them, newer hosts read them).
  kStatOomKills = 10,
  kStatAllocStalls = 11,
  kStatAsyncScans = 12,
  kStatDirectScans = 13,
  kStatAsyncReclaims = 14,
  kStatDirectReclaims = 15,
};

// 5.5.6.3: one statistic, packed, little-endian.
struct [[gnu::packed]] StatEntry {
  uint16_t tag;
  uint64_t value;
};
static_assert(sizeof(StatEntry) == 10);

}  // namespace blimp::balloon
