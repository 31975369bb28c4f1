/* libFuzzer target: blimpq request decoding (host/qemu/blimp-balloon-decode.c), the exact code
 * QEMU runs on guest buffers. Checks that decoding never reads outside the buffer (ASan) and
 * that accepted requests satisfy the spec's invariants. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "blimp-balloon-decode.h"

#define MAX_PFN (1ULL << 40)

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  /* copy to an exactly-sized heap buffer so ASan sees any overread */
  uint8_t* buf = malloc(size ? size : 1);
  BlimpReq req;
  memcpy(buf, data, size);
  int st = blimp_decode_req(buf, size, &req);
  if (st == BLIMP_S_OK) {
    assert(req.flags == 0);
    assert(req.payload == buf + BLIMP_REQ_HDR_SIZE);
    assert(req.payload_len == size - BLIMP_REQ_HDR_SIZE);
    switch (req.type) {
      case BLIMP_REQ_PSTATE_REGISTER: {
        BlimpPstateReg reg;
        assert(req.count == 1 && req.payload_len == BLIMP_PSTATE_REG_SIZE);
        if (blimp_decode_pstate_register(&req, &reg, MAX_PFN) == BLIMP_S_OK) {
          assert((reg.array_gpa & 4095) == 0);
          assert(reg.npages > 0 && reg.base_pfn + reg.npages <= MAX_PFN);
          assert(reg.array_gpa + reg.npages > reg.array_gpa);
        }
        break;
      }
      case BLIMP_REQ_PSTATE_UNREGISTER: assert(req.count == 0 && req.payload_len == 0); break;
      case BLIMP_REQ_PSTATE_AGES: {
        BlimpPstateAgesReg ages;
        assert(req.count == 1 && req.payload_len == BLIMP_PSTATE_AGES_SIZE);
        /* registered array: none, the size the request names, or another size */
        uint64_t named = blimp_le64(req.payload + 8);
        uint64_t registered[] = {0, named, 65536};
        for (int k = 0; k < 3; k++) {
          if (blimp_decode_pstate_ages(&req, &ages, registered[k], MAX_PFN) == BLIMP_S_OK) {
            assert(registered[k] != 0 && ages.npages == registered[k] && ages.reserved == 0);
            assert((ages.ages_gpa & 4095) == 0);
            uint64_t end = ages.ages_gpa + blimp_age_block_bytes(ages.npages);
            assert(end > ages.ages_gpa && end <= (MAX_PFN << 12));
          }
        }
        break;
      }
      case BLIMP_REQ_SEAL:
      case BLIMP_REQ_UNSEAL: {
        assert(req.count >= 1 && req.count <= BLIMP_MAX_ENTRIES);
        for (uint32_t i = 0; i < req.count; i++) {
          BlimpSeal e;
          int s = req.type == BLIMP_REQ_SEAL ? blimp_decode_seal(&req, i, &e, MAX_PFN)
                                             : blimp_decode_unseal(&req, i, &e, MAX_PFN);
          if (s == BLIMP_S_OK) {
            assert(e.npages >= 1 && e.pfn < MAX_PFN && e.npages <= MAX_PFN - e.pfn);
            assert((e.flags & ~BLIMP_SEAL_F_KNOWN) == 0);
          }
          if (req.type == BLIMP_REQ_SEAL) {
            /* Flags decide acceptance on their own: an unknown bit rejects the entry, every
             * combination of known bits (ZERO, WRITABLE) is accepted as it was sent. */
            const uint8_t* raw = req.payload + (size_t)i * BLIMP_SEAL_ENTRY_SIZE;
            uint32_t flags = (uint32_t)raw[12] | (uint32_t)raw[13] << 8 | (uint32_t)raw[14] << 16 |
                             (uint32_t)raw[15] << 24;
            if (flags & ~BLIMP_SEAL_F_KNOWN) {
              assert(s == BLIMP_S_EINVAL);
            } else if (e.npages != 0) {
              assert(s != BLIMP_S_EINVAL);
            }
            if (s == BLIMP_S_OK) assert(e.flags == flags);
          }
        }
        /* out-of-range index is refused */
        BlimpSeal e;
        assert(blimp_decode_seal(&req, req.count, &e, MAX_PFN) == BLIMP_S_EINVAL);
        break;
      }
      default: assert(0 && "unknown type accepted");
    }
  } else {
    assert(st == BLIMP_S_EINVAL || st == BLIMP_S_EUNSUPP);
  }
  free(buf);
  return 0;
}
