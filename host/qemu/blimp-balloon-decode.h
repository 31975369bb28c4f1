/*
 * Blimp virtio-balloon extensions: decoders for guest input, shared verbatim by the QEMU patch
 * series (copied into hw/virtio/ by host/qemu/build.sh) and by the libFuzzer targets in
 * tests/fuzz/. Pure C11, no QEMU dependency, no allocation, no I/O.
 *
 * Wire format: docs/spec-virtio-balloon-blimp.md. Everything the guest sends is untrusted:
 * every function here validates lengths, overflow and reserved fields and never reads outside
 * the buffer it is given.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#ifndef BLIMP_BALLOON_DECODE_H
#define BLIMP_BALLOON_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BLIMP_PAGE_SHIFT 12
#define BLIMP_PAGE_SIZE  (1u << BLIMP_PAGE_SHIFT)

/* Feature bits (spec section 2). */
#define VIRTIO_BALLOON_F_BLIMP_PAGE_STATES 56
#define VIRTIO_BALLOON_F_BLIMP_SHARE_HINTS 57

/* ---- page-state bytes (spec section 4) ---- */
#define BLIMP_PS_STABLE               0x00
#define BLIMP_PS_UNUSED               0x01
/* 0x02 (POT_VOLATILE) left the protocol: reserved, an undefined byte like any other */
#define BLIMP_PS_VOLATILE             0x03
#define BLIMP_PS_DISCARDING_UNUSED    0x41 /* host-owned transient */
#define BLIMP_PS_DISCARDING_VOLATILE  0x43 /* host-owned transient */
#define BLIMP_PS_DISCARDED_UNUSED     0x81 /* content is zero */
#define BLIMP_PS_DISCARDED_VOLATILE   0x83 /* content lost (reads as zero) */

/* ---- extension queue requests (spec section 5) ---- */
#define BLIMP_REQ_HDR_SIZE      16
#define BLIMP_RESP_SIZE         16
#define BLIMP_MAX_ENTRIES       4096

#define BLIMP_REQ_PSTATE_REGISTER   1
#define BLIMP_REQ_PSTATE_UNREGISTER 2
#define BLIMP_REQ_SEAL              3
#define BLIMP_REQ_UNSEAL            4
#define BLIMP_REQ_PSTATE_AGES       5

#define BLIMP_PSTATE_REG_SIZE   24 /* le64 array_gpa, le64 npages, le64 base_pfn */
#define BLIMP_PSTATE_AGES_SIZE  24 /* le64 ages_gpa, le64 npages, le64 reserved */
#define BLIMP_SEAL_ENTRY_SIZE   24 /* le64 pfn, le32 npages, le32 flags, le64 hash */
#define BLIMP_UNSEAL_ENTRY_SIZE 16 /* le64 pfn, le32 npages, le32 reserved */

#define BLIMP_SEAL_F_ZERO       0x1u /* every page of the run is zero-filled */
/* A merge candidate, not stable: the guest may write the run without UNSEAL (spec 5.4). The
 * device marks it mergeable like any hint; KSM's copy on write keeps writes correct. */
#define BLIMP_SEAL_F_WRITABLE   0x2u
#define BLIMP_SEAL_F_KNOWN      (BLIMP_SEAL_F_ZERO | BLIMP_SEAL_F_WRITABLE)

/* Response status (le32 at offset 0 of the device-writable part). */
#define BLIMP_S_OK      0
#define BLIMP_S_EINVAL  1 /* malformed request: bad header, size, reserved bits */
#define BLIMP_S_ERANGE  2 /* some range outside guest RAM (that entry rejected) */
#define BLIMP_S_ENOSPC  3 /* a host limit was reached (entries beyond it rejected) */
#define BLIMP_S_EUNSUPP 4 /* request type unknown or its feature not negotiated */
#define BLIMP_S_EBUSY   5 /* e.g. array already registered */

typedef struct BlimpRun {
    uint64_t pfn;
    uint64_t npages;
} BlimpRun;

typedef struct BlimpReq {
    uint16_t type;
    uint16_t flags;
    uint32_t count;
    const uint8_t *payload;
    size_t payload_len;
} BlimpReq;

typedef struct BlimpPstateReg {
    uint64_t array_gpa;
    uint64_t npages;
    uint64_t base_pfn;
} BlimpPstateReg;

typedef struct BlimpPstateAgesReg {
    uint64_t ages_gpa;
    uint64_t npages;
    uint64_t reserved;
} BlimpPstateAgesReg;

typedef struct BlimpSeal {
    uint64_t pfn;
    uint32_t npages;
    uint32_t flags;
    uint64_t hash;
} BlimpSeal;

/* Little-endian loads from an untrusted byte buffer (no alignment assumed). */
uint16_t blimp_le16(const uint8_t *p);
uint32_t blimp_le32(const uint8_t *p);
uint64_t blimp_le64(const uint8_t *p);
void blimp_put_le32(uint8_t *p, uint32_t v);

/*
 * Sort @pfns in place and merge them into runs of consecutive page frames, duplicates
 * collapsed. @runs must have room for @n entries. Returns the number of runs. O(n log n),
 * no allocation (heap sort, so the worst case is bounded for hostile input).
 */
size_t blimp_pfns_to_runs(uint64_t *pfns, size_t n, BlimpRun *runs);

/*
 * Decode a request header from the driver-readable bytes of one buffer. Returns BLIMP_S_OK
 * and fills @req, or BLIMP_S_EINVAL (short buffer, nonzero flags/reserved, count beyond
 * BLIMP_MAX_ENTRIES, payload length not equal to count * entry size for the type) or
 * BLIMP_S_EUNSUPP (unknown type).
 */
int blimp_decode_req(const uint8_t *buf, size_t len, BlimpReq *req);

/* PSTATE_REGISTER payload: array of @npages bytes at @array_gpa for pfns from @base_pfn. */
int blimp_decode_pstate_register(const BlimpReq *req, BlimpPstateReg *reg,
                                 uint64_t max_pfn);

/* SEAL entry @i (i < req->count): npages >= 1, no overflow, pfn + npages <= max_pfn, only
 * known flags. UNSEAL entries decode into the same struct with hash = 0 and flags = 0. */
int blimp_decode_seal(const BlimpReq *req, uint32_t i, BlimpSeal *out, uint64_t max_pfn);
int blimp_decode_unseal(const BlimpReq *req, uint32_t i, BlimpSeal *out, uint64_t max_pfn);

/*
 * Page-state sweep, host side. Claims every discardable page (UNUSED, VOLATILE) of the
 * @n-byte state array by one-byte compare-and-swap to the matching DISCARDING value, skipping
 * indices in [skip_lo, skip_hi) (the pages holding the array itself). Emits maximal runs of
 * claimed indices through @emit; stops claiming when @max_claim pages are claimed. UNUSED
 * pages are only claimed when @claim_unused (false when the guest asked for page poisoning). Counts
 * every byte that is not a defined state in *@invalid. Returns the number of pages claimed.
 * If @emit returns false the sweep stops (after emitting that run).
 */
typedef bool (*BlimpRunFn)(void *opaque, uint64_t first, uint64_t count);
uint64_t blimp_pstate_claim(uint8_t *states, uint64_t n, uint64_t skip_lo, uint64_t skip_hi,
                            uint64_t max_claim, bool claim_unused, BlimpRunFn emit,
                            void *opaque, uint64_t *invalid);

/*
 * The same claim, resumable, for sweeps in bounded batches (patch 0007): scans from index
 * *@pos, claims at most @max_claim pages, and leaves in *@pos the index where the next batch
 * starts (@n when the whole array was scanned). Runs never extend past the batch. Returns
 * the number of pages claimed; fewer than @max_claim means the scan reached the end.
 */
uint64_t blimp_pstate_claim_from(uint8_t *states, uint64_t n, uint64_t *pos, uint64_t skip_lo,
                                 uint64_t skip_hi, uint64_t max_claim, bool claim_unused,
                                 BlimpRunFn emit, void *opaque, uint64_t *invalid);

/*
 * The same, for the states in @kinds only (BLIMP_CLAIM_UNUSED, BLIMP_CLAIM_VOLATILE, or both):
 * a sweep with a limit (patch 0011) makes one pass for UNUSED pages, then one for VOLATILE
 * ones, so a guest's caches are discarded only when its free memory did not cover the need.
 */
#define BLIMP_CLAIM_UNUSED   1u
#define BLIMP_CLAIM_VOLATILE 2u
uint64_t blimp_pstate_claim_kinds_from(uint8_t *states, uint64_t n, uint64_t *pos,
                                       uint64_t skip_lo, uint64_t skip_hi, uint64_t max_claim,
                                       unsigned kinds, BlimpRunFn emit, void *opaque,
                                       uint64_t *invalid);

/*
 * The STABLE guard (patch 0007, spec section 4.4): the guest handed the device the pages of
 * array indices [@first, @first + @count) to discard (an inflate buffer, a free-page report),
 * but the buffer may be stale (completed after the guest gave up on it and reused the pages).
 * Each page is decided by its byte alone:
 *   UNUSED            claimed by CAS to DISCARDING_UNUSED and emitted in maximal runs through
 *                     @emit (the caller discards each run, then finishes it with
 *                     blimp_pstate_finish); returned count;
 *   DISCARDED_UNUSED  already discarded, nothing to do: counted in *@already;
 *   anything else     (STABLE, VOLATILE, DISCARDING_x, DISCARDED_VOLATILE, an
 *                     invalid byte, a CAS lost to the guest) and the array's own pages
 *                     [@skip_lo, @skip_hi): refused, never touched, counted in *@refused.
 * Indices at or past @n (not described by the array) are the caller's business: they are
 * counted in *@outside and not touched. @already, @refused, @outside may be NULL. Every index
 * of the range is counted exactly once: claimed + already + refused + outside == count.
 */
uint64_t blimp_pstate_guard_claim(uint8_t *states, uint64_t n, uint64_t skip_lo,
                                  uint64_t skip_hi, uint64_t first, uint64_t count,
                                  BlimpRunFn emit, void *opaque, uint64_t *already,
                                  uint64_t *refused, uint64_t *outside);

/*
 * Finish a claimed run: @discarded true turns DISCARDING_x into DISCARDED_x, false puts the
 * original state (x) back. Only bytes still holding a DISCARDING value are touched (the guest
 * never writes those). Returns the number of bytes changed; adds the ones that were UNUSED /
 * VOLATILE to *@n_unused / *@n_volatile (either may be NULL).
 */
uint64_t blimp_pstate_finish(uint8_t *states, uint64_t first, uint64_t count, bool discarded,
                             uint64_t *n_unused, uint64_t *n_volatile);

/* True for the 7 defined byte values. */
bool blimp_pstate_valid(uint8_t v);

/* ---- page ages (patch 0012, spec section 4.5) ---- */

/*
 * The age block: a 64-byte header (le32 magic, le32 clock_s: the guest's clock in seconds) and
 * one le32 stamp per page of the state array: the guest clock at which the page last became
 * UNUSED or VOLATILE. Guest-written with plain stores, only ever read by the host, and advisory:
 * a wrong stamp can only change which of the guest's own discardable pages go first.
 */
#define BLIMP_AGE_HDR_SIZE      64
#define BLIMP_AGE_MAGIC         0x45474141u /* "AAGE" */
/* Histogram buckets: bucket 0 holds age 0 s, bucket b >= 1 ages in [2^(b-1), 2^b) s. */
#define BLIMP_AGE_BUCKETS       33

/*
 * PSTATE_AGES payload: the age block at @ages_gpa (page aligned, reserved 0) for the @npages
 * pages of the array registered before (@registered_npages, 0 when none: then EINVAL).
 * The whole block, BLIMP_AGE_HDR_SIZE + 4 * npages bytes, must lie below @max_pfn.
 */
int blimp_decode_pstate_ages(const BlimpReq *req, BlimpPstateAgesReg *ages,
                             uint64_t registered_npages, uint64_t max_pfn);
/* Size in bytes of the age block for @npages pages. */
uint64_t blimp_age_block_bytes(uint64_t npages);

/* How long page @i has been discardable at guest clock @clock: a stamp from the future (a
 * racing or lying guest) counts as 0. @stamps points at the first stamp (header skipped). */
uint32_t blimp_page_age(const uint32_t *stamps, uint64_t i, uint32_t clock);
unsigned blimp_age_bucket(uint32_t age_s);
/* The smallest age in bucket @b (0, 1, 2, 4, ...). */
uint32_t blimp_age_bucket_min(unsigned b);

/* The guest's discardable memory by age: UNUSED and VOLATILE pages per bucket (the array's own
 * pages excluded), the other defined states counted whole, invalid bytes apart. Without
 * @stamps every discardable page lands in bucket 0. A scan without claiming: the guest may be
 * running, so it is a snapshot. */
typedef struct BlimpAgeHistogram {
    uint64_t unused[BLIMP_AGE_BUCKETS];
    uint64_t volatile_pages[BLIMP_AGE_BUCKETS];
    uint64_t stable, discarded, in_flight, invalid;
} BlimpAgeHistogram;
void blimp_pstate_age_histogram(const uint8_t *states, const uint32_t *stamps, uint64_t n,
                                uint32_t clock, uint64_t skip_lo, uint64_t skip_hi,
                                BlimpAgeHistogram *h);

/*
 * blimp_pstate_claim_kinds_from, restricted to pages at least @min_age seconds old by
 * @stamps and @clock (@stamps NULL: no restriction). A limited sweep calls it once per
 * non-empty histogram bucket, oldest first, so the pages the guest left alone longest go first.
 */
uint64_t blimp_pstate_claim_aged_from(uint8_t *states, uint64_t n, uint64_t *pos,
                                      uint64_t skip_lo, uint64_t skip_hi, uint64_t max_claim,
                                      unsigned kinds, const uint32_t *stamps, uint32_t clock,
                                      uint32_t min_age, BlimpRunFn emit, void *opaque,
                                      uint64_t *invalid);

/* ---- sharing hints: marked runs (patch 0006) ---- */

/*
 * The runs to mark MADV_MERGEABLE for a hint list, as the device's incremental marking builds
 * them when hints arrive in PFN order: walk @hints (@n of them, sorted by pfn, disjoint), keep
 * those for which @eligible(@opaque, hint) is true (every hint when @eligible is NULL), merge a
 * hint into the previous run when it starts at most @gap pages after that run's end and
 * @bridgeable(@opaque, end, hint's pfn) allows marking the pages between (always when
 * @bridgeable is NULL; adjacent hints always join), and open at most @max_runs runs: a hint
 * that would open one more is left out and counted in *@skipped (a later hint within @gap of
 * the last run still joins it). Hints with npages 0, a pfn + npages that wraps, or out of order
 * (starting before the last run's end) are left out and counted in *@bad (either pointer may be
 * NULL). @out needs room for min(@n, @max_runs) runs. Returns the number of runs written:
 * sorted, disjoint, more than @gap pages apart or with a gap @bridgeable refused.
 */
typedef bool (*BlimpHintPred)(void *opaque, const BlimpSeal *hint);
typedef bool (*BlimpGapPred)(void *opaque, uint64_t from, uint64_t to);
size_t blimp_hints_to_runs(const BlimpSeal *hints, size_t n, uint64_t gap, size_t max_runs,
                           BlimpHintPred eligible, BlimpGapPred bridgeable, void *opaque,
                           BlimpRun *out, uint64_t *skipped, uint64_t *bad);

/*
 * Difference of two run sets (each sorted by pfn and disjoint; adjacent runs allowed; runs
 * with npages 0 ignored; a run whose end would pass 2^64 is cut there). Calls @drop for every
 * maximal range in @old but not in @new and @add for every maximal range in @new but not in
 * @old, all in ascending pfn order (drops and adds interleaved), so the caller can turn the
 * marking @old into @new touching nothing the two share. Stops early when a callback returns
 * false. O(n_old + n_new), no allocation. Returns false when the inputs are not sorted and
 * disjoint (then nothing at all is emitted).
 */
bool blimp_runs_diff(const BlimpRun *old, size_t n_old, const BlimpRun *new_runs,
                     size_t n_new, BlimpRunFn drop, BlimpRunFn add, void *opaque);

#endif
