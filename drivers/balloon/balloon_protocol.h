// virtio-balloon wire protocol constants: virtio 1.2, section 5.5 "Memory Balloon Device", plus
// the statistics tags Linux added after it (include/uapi/linux/virtio_balloon.h, tags 10-15).
#pragma once

#include <cstdint>

namespace blimp::balloon {

constexpr uint16_t kDeviceId = 5;

// 5.5.3 Feature bits.
constexpr unsigned kFeatureMustTellHost = 0;
constexpr unsigned kFeatureStatsVq = 1;
constexpr unsigned kFeatureDeflateOnOom = 2;
constexpr unsigned kFeatureFreePageHint = 3;
constexpr unsigned kFeaturePagePoison = 4;
constexpr unsigned kFeaturePageReporting = 5;

// Blimp extensions (docs/spec-virtio-balloon-blimp.md, section 2): device-specific bits from
// the 50..127 range, offered only by the patched QEMU and only on modern transports.
constexpr unsigned kFeatureBlimpPageStates = 56;
constexpr unsigned kFeatureBlimpShareHints = 57;

// blimpq request types and status codes (spec section 5).
enum BlimpRequest : uint16_t {
  kBlimpPstateRegister = 1,
  kBlimpPstateUnregister = 2,
  kBlimpSeal = 3,
  kBlimpUnseal = 4,
};
enum BlimpStatus : uint32_t {
  kBlimpOk = 0,
  kBlimpEinval = 1,
  kBlimpErange = 2,
  kBlimpEnospc = 3,
  kBlimpEunsupp = 4,
  kBlimpEbusy = 5,
};
struct BlimpRequestHeader {
  uint16_t type;
  uint16_t flags;
  uint32_t count;
  uint64_t reserved;
};
static_assert(sizeof(BlimpRequestHeader) == 16);
struct BlimpResponse {
  uint32_t status;
  uint32_t accepted;
  uint32_t rejected;
  uint32_t reserved;
};
static_assert(sizeof(BlimpResponse) == 16);
struct BlimpPstateRegister {
  uint64_t array_gpa;
  uint64_t npages;
  uint64_t base_pfn;
};
static_assert(sizeof(BlimpPstateRegister) == 24);
struct BlimpSealEntry {
  uint64_t pfn;
  uint32_t npages;
  uint32_t flags;  // bit 0: every page of the run is zero-filled
  uint64_t hash;   // XXH3-64, seed 0, of each page's content
};
static_assert(sizeof(BlimpSealEntry) == 24);
struct BlimpUnsealEntry {
  uint64_t pfn;
  uint32_t npages;
  uint32_t reserved;
};
static_assert(sizeof(BlimpUnsealEntry) == 16);
constexpr uint32_t kBlimpSealZero = 1;
constexpr uint32_t kBlimpMaxEntries = 4096;

const char* blimp_status_name(uint32_t status);

// 5.5.4 Device configuration layout (little-endian; legacy devices use guest endianness, which on
// x86 is the same).
constexpr uint32_t kConfigNumPages = 0;     // target balloon size in 4 KiB pages (device writes)
constexpr uint32_t kConfigActual = 4;       // current balloon size (driver writes)
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
