// lib/blimp_wire.h (what the guest sends) against host/qemu/blimp-balloon-decode.h (what the
// patched QEMU decodes): the same feature bits, request types, status codes, sizes and offsets.
#include <gtest/gtest.h>

#include <cstddef>

#include "lib/blimp_wire.h"

extern "C" {
#include "host/qemu/blimp-balloon-decode.h"
}

namespace w = blimp::wire;

// Feature bits (spec section 2).
static_assert(w::kFeatureBlimpPageStates == VIRTIO_BALLOON_F_BLIMP_PAGE_STATES);
static_assert(w::kFeatureBlimpShareHints == VIRTIO_BALLOON_F_BLIMP_SHARE_HINTS);

// Request types and limits (spec section 5).
static_assert(w::kBlimpPstateRegister == BLIMP_REQ_PSTATE_REGISTER);
static_assert(w::kBlimpPstateUnregister == BLIMP_REQ_PSTATE_UNREGISTER);
static_assert(w::kBlimpSeal == BLIMP_REQ_SEAL);
static_assert(w::kBlimpUnseal == BLIMP_REQ_UNSEAL);
static_assert(w::kBlimpPstateAges == BLIMP_REQ_PSTATE_AGES);
static_assert(w::kBlimpAgeMagic == BLIMP_AGE_MAGIC);
static_assert(w::kBlimpMaxEntries == BLIMP_MAX_ENTRIES);
static_assert(w::kBlimpSealZero == BLIMP_SEAL_F_ZERO);
static_assert(w::kBlimpSealWritable == BLIMP_SEAL_F_WRITABLE);

// Status codes.
static_assert(w::kBlimpOk == BLIMP_S_OK);
static_assert(w::kBlimpEinval == BLIMP_S_EINVAL);
static_assert(w::kBlimpErange == BLIMP_S_ERANGE);
static_assert(w::kBlimpEnospc == BLIMP_S_ENOSPC);
static_assert(w::kBlimpEunsupp == BLIMP_S_EUNSUPP);
static_assert(w::kBlimpEbusy == BLIMP_S_EBUSY);

// Sizes.
static_assert(sizeof(w::BlimpRequestHeader) == BLIMP_REQ_HDR_SIZE);
static_assert(sizeof(w::BlimpResponse) == BLIMP_RESP_SIZE);
static_assert(sizeof(w::BlimpPstateRegister) == BLIMP_PSTATE_REG_SIZE);
static_assert(sizeof(w::BlimpPstateAges) == BLIMP_PSTATE_AGES_SIZE);
static_assert(sizeof(w::BlimpPstateAges) == sizeof(BlimpPstateAgesReg));
static_assert(offsetof(w::BlimpPstateAges, ages_gpa) == offsetof(BlimpPstateAgesReg, ages_gpa));
static_assert(offsetof(w::BlimpPstateAges, npages) == offsetof(BlimpPstateAgesReg, npages));
static_assert(sizeof(w::BlimpAgeHeader) == BLIMP_AGE_HDR_SIZE);
static_assert(offsetof(w::BlimpAgeHeader, clock_s) == 4);  // blimp_age_clock reads offset 4
static_assert(sizeof(w::BlimpSealEntry) == BLIMP_SEAL_ENTRY_SIZE);
static_assert(sizeof(w::BlimpUnsealEntry) == BLIMP_UNSEAL_ENTRY_SIZE);

// Field offsets: the decoded C structs mirror the wire entries field by field.
static_assert(sizeof(w::BlimpPstateRegister) == sizeof(BlimpPstateReg));
static_assert(offsetof(w::BlimpPstateRegister, array_gpa) == offsetof(BlimpPstateReg, array_gpa));
static_assert(offsetof(w::BlimpPstateRegister, npages) == offsetof(BlimpPstateReg, npages));
static_assert(offsetof(w::BlimpPstateRegister, base_pfn) == offsetof(BlimpPstateReg, base_pfn));
static_assert(sizeof(w::BlimpSealEntry) == sizeof(BlimpSeal));
static_assert(offsetof(w::BlimpSealEntry, pfn) == offsetof(BlimpSeal, pfn));
static_assert(offsetof(w::BlimpSealEntry, npages) == offsetof(BlimpSeal, npages));
static_assert(offsetof(w::BlimpSealEntry, flags) == offsetof(BlimpSeal, flags));
static_assert(offsetof(w::BlimpSealEntry, hash) == offsetof(BlimpSeal, hash));
// The unseal entry shares BlimpSeal's first two fields (the decoder reads the same offsets).
static_assert(offsetof(w::BlimpUnsealEntry, pfn) == offsetof(BlimpSeal, pfn));
static_assert(offsetof(w::BlimpUnsealEntry, npages) == offsetof(BlimpSeal, npages));
static_assert(offsetof(w::BlimpUnsealEntry, reserved) == 12);
// Header: le16 type, le16 flags, le32 count, le64 reserved (the decoder's layout, BlimpReq
// keeps type, flags, count in the same order).
static_assert(offsetof(w::BlimpRequestHeader, type) == 0);
static_assert(offsetof(w::BlimpRequestHeader, flags) == 2);
static_assert(offsetof(w::BlimpRequestHeader, count) == 4);
static_assert(offsetof(w::BlimpRequestHeader, reserved) == 8);
// Response: le32 status at offset 0 (blimp_put_le32 writes it there), then accepted, rejected.
static_assert(offsetof(w::BlimpResponse, status) == 0);
static_assert(offsetof(w::BlimpResponse, accepted) == 4);
static_assert(offsetof(w::BlimpResponse, rejected) == 8);

namespace {

TEST(blimp_wire, StatusNames) {
  EXPECT_STREQ(w::blimp_status_name(BLIMP_S_OK), "OK");
  EXPECT_STREQ(w::blimp_status_name(BLIMP_S_EINVAL), "EINVAL");
  EXPECT_STREQ(w::blimp_status_name(BLIMP_S_ERANGE), "ERANGE");
  EXPECT_STREQ(w::blimp_status_name(BLIMP_S_ENOSPC), "ENOSPC");
  EXPECT_STREQ(w::blimp_status_name(BLIMP_S_EUNSUPP), "EUNSUPP");
  EXPECT_STREQ(w::blimp_status_name(BLIMP_S_EBUSY), "EBUSY");
  EXPECT_STREQ(w::blimp_status_name(6), "unknown status");
}

TEST(blimp_wire, ConstantsAgreeAtRunTime) {
  // The static_asserts above are the test; these repeat the key ones where a report shows them.
  EXPECT_EQ(sizeof(w::BlimpSealEntry), size_t{BLIMP_SEAL_ENTRY_SIZE});
  EXPECT_EQ(w::kBlimpMaxEntries, uint32_t{BLIMP_MAX_ENTRIES});
  EXPECT_EQ(w::kFeatureBlimpShareHints, unsigned{VIRTIO_BALLOON_F_BLIMP_SHARE_HINTS});
}

}  // namespace
