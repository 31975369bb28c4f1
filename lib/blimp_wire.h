// Wire format of the Blimp virtio-balloon extensions (docs/spec-virtio-balloon-blimp.md): feature
// bits, blimpq request types, status codes and the request, response and entry layouts.
//
// It lives in lib/ (layer 0) because two layers speak it: the balloon driver (drivers/balloon,
// which owns the queue) and mm (page states and sharing, which fill the requests). A header of
// constants and plain structs has no dependencies, so lib/ is the one place below both that keeps
// the layering rule as it is. The host decodes the same bytes in host/qemu/blimp-balloon-decode.h;
// tests/unit/lib/blimp_wire_test.cpp checks that the two agree.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blimp::wire {

// Device-specific feature bits from the 50..127 range (spec section 2), offered only by the
// patched QEMU and only on modern transports.
constexpr unsigned kFeatureBlimpPageStates = 56;
constexpr unsigned kFeatureBlimpShareHints = 57;

// blimpq request types and status codes (spec section 5).
enum BlimpRequest : uint16_t {
  kBlimpPstateRegister = 1,
  kBlimpPstateUnregister = 2,
  kBlimpSeal = 3,
  kBlimpUnseal = 4,
  kBlimpPstateAges = 5,
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
// PSTATE_AGES (spec section 4.5): after PSTATE_REGISTER, the guest tells the device where it
// publishes how long each page has been discardable. The age block is a BlimpAgeHeader followed
// by one uint32_t stamp per page of the registered array: the guest clock (header.clock_s, in
// seconds) at which the page last became UNUSED or VOLATILE. Advisory: the guest writes it with
// plain stores, the host only reads it to order its claims and to count idle memory.
struct BlimpPstateAges {
  uint64_t ages_gpa;
  uint64_t npages;  // the registered array's npages
  uint64_t reserved;
};
static_assert(sizeof(BlimpPstateAges) == 24);
struct BlimpAgeHeader {
  uint32_t magic;    // kBlimpAgeMagic
  uint32_t clock_s;  // the guest's clock, advanced at least once a second while it runs
  uint64_t reserved[7];
};
static_assert(sizeof(BlimpAgeHeader) == 64);
constexpr uint32_t kBlimpAgeMagic = 0x45474141;  // "AAGE"
struct BlimpSealEntry {
  uint64_t pfn;
  uint32_t npages;
  uint32_t flags;  // kBlimpSealZero, kBlimpSealWritable
  uint64_t hash;   // XXH3-64, seed 0, of each page's content
};
static_assert(sizeof(BlimpSealEntry) == 24);
struct BlimpUnsealEntry {
  uint64_t pfn;
  uint32_t npages;
  uint32_t reserved;
};
static_assert(sizeof(BlimpUnsealEntry) == 16);
// Every page of the run is zero-filled.
constexpr uint32_t kBlimpSealZero = 1;
// A merge candidate, not a promise: the guest may write pages of the run at any time without
// UNSEAL (kernel metadata and .data/.bss identical across VMs); `hash` is their content when
// hinted. KSM breaks sharing on a write (copy on write), so the host loses nothing but scans.
constexpr uint32_t kBlimpSealWritable = 2;
constexpr uint32_t kBlimpMaxEntries = 4096;

constexpr const char* blimp_status_name(uint32_t status) {
  switch (status) {
    case kBlimpOk: return "OK";
    case kBlimpEinval: return "EINVAL";
    case kBlimpErange: return "ERANGE";
    case kBlimpEnospc: return "ENOSPC";
    case kBlimpEunsupp: return "EUNSUPP";
    case kBlimpEbusy: return "EBUSY";
    default: return "unknown status";
  }
}

}  // namespace blimp::wire
