/*
 * Blimp virtio-balloon extensions: guest-input decoders. See blimp-balloon-decode.h.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include "blimp-balloon-decode.h"

uint16_t blimp_le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

uint32_t blimp_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

uint64_t blimp_le64(const uint8_t *p)
{
    return (uint64_t)blimp_le32(p) | ((uint64_t)blimp_le32(p + 4) << 32);
}

void blimp_put_le32(uint8_t *p, uint32_t v)
{
    p[0] = v & 0xff;
    p[1] = (v >> 8) & 0xff;
    p[2] = (v >> 16) & 0xff;
    p[3] = (v >> 24) & 0xff;
}

/* ---- sort + merge ---------------------------------------------------------------------- */

static void sift_down(uint64_t *a, size_t start, size_t end)
{
    size_t root = start;
    while (2 * root + 1 < end) {
        size_t child = 2 * root + 1;
        if (child + 1 < end && a[child] < a[child + 1]) {
            child++;
        }
        if (a[root] >= a[child]) {
            return;
        }
        uint64_t t = a[root];
        a[root] = a[child];
        a[child] = t;
        root = child;
    }
}

static bool is_sorted(const uint64_t *a, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        if (a[i - 1] > a[i]) {
            return false;
        }
    }
    return true;
}

size_t blimp_pfns_to_runs(uint64_t *pfns, size_t n, BlimpRun *runs)
{
    size_t nr = 0;

    if (n == 0) {
        return 0;
    }
    if (!is_sorted(pfns, n)) {   /* Linux sends mostly sorted buffers: skip the sort then */
        for (size_t i = n / 2; i-- > 0;) {
            sift_down(pfns, i, n);
        }
        for (size_t end = n - 1; end > 0; end--) {
            uint64_t t = pfns[0];
            pfns[0] = pfns[end];
            pfns[end] = t;
            sift_down(pfns, 0, end);
        }
    }
    runs[0].pfn = pfns[0];
    runs[0].npages = 1;
    for (size_t i = 1; i < n; i++) {
        BlimpRun *r = &runs[nr];
        if (pfns[i] == r->pfn + r->npages - 1) {
            continue;                                   /* duplicate */
        }
        if (pfns[i] == r->pfn + r->npages && r->pfn + r->npages != 0) {
            r->npages++;                                /* extends the run */
            continue;
        }
        nr++;
        runs[nr].pfn = pfns[i];
        runs[nr].npages = 1;
    }
    return nr + 1;
}

/* ---- extension queue requests ---------------------------------------------------------- */

static size_t entry_size(uint16_t type, bool *fixed_count)
{
    *fixed_count = false;
    switch (type) {
    case BLIMP_REQ_PSTATE_REGISTER:
        *fixed_count = true;
        return BLIMP_PSTATE_REG_SIZE;
    case BLIMP_REQ_PSTATE_UNREGISTER:
        *fixed_count = true;
        return 0;
    case BLIMP_REQ_PSTATE_AGES:
        *fixed_count = true;
        return BLIMP_PSTATE_AGES_SIZE;
    case BLIMP_REQ_SEAL:
        return BLIMP_SEAL_ENTRY_SIZE;
    case BLIMP_REQ_UNSEAL:
        return BLIMP_UNSEAL_ENTRY_SIZE;
    default:
        return (size_t)-1;
    }
}

int blimp_decode_req(const uint8_t *buf, size_t len, BlimpReq *req)
{
    bool fixed;
    size_t esz;

    if (!buf || len < BLIMP_REQ_HDR_SIZE) {
        return BLIMP_S_EINVAL;
    }
    req->type = blimp_le16(buf);
    req->flags = blimp_le16(buf + 2);
    req->count = blimp_le32(buf + 4);
    req->payload = buf + BLIMP_REQ_HDR_SIZE;
    req->payload_len = len - BLIMP_REQ_HDR_SIZE;
    if (req->flags != 0 || blimp_le64(buf + 8) != 0) {
        return BLIMP_S_EINVAL;
    }
    esz = entry_size(req->type, &fixed);
    if (esz == (size_t)-1) {
        return BLIMP_S_EUNSUPP;
    }
    if (fixed) {
        /* count must be 1 (register) or 0 (unregister): exactly one fixed payload */
        if (req->count != (esz ? 1u : 0u) || req->payload_len != esz) {
            return BLIMP_S_EINVAL;
        }
        return BLIMP_S_OK;
    }
    if (req->count == 0 || req->count > BLIMP_MAX_ENTRIES ||
        req->payload_len != (size_t)req->count * esz) {
        return BLIMP_S_EINVAL;
    }
    return BLIMP_S_OK;
}

int blimp_decode_pstate_register(const BlimpReq *req, BlimpPstateReg *reg, uint64_t max_pfn)
{
    if (req->type != BLIMP_REQ_PSTATE_REGISTER || req->payload_len != BLIMP_PSTATE_REG_SIZE) {
        return BLIMP_S_EINVAL;
    }
    reg->array_gpa = blimp_le64(req->payload);
    reg->npages = blimp_le64(req->payload + 8);
    reg->base_pfn = blimp_le64(req->payload + 16);
    if (reg->array_gpa & (BLIMP_PAGE_SIZE - 1)) {
        return BLIMP_S_EINVAL;                  /* array must start on a page boundary */
    }
    if (reg->npages == 0 || reg->npages > max_pfn || reg->base_pfn > max_pfn ||
        reg->npages > max_pfn - reg->base_pfn) {
        return BLIMP_S_ERANGE;                  /* describes pages beyond guest RAM */
    }
    if (reg->array_gpa + reg->npages < reg->array_gpa) {
        return BLIMP_S_ERANGE;                  /* wraps */
    }
    return BLIMP_S_OK;
}

static int check_run(uint64_t pfn, uint64_t npages, uint64_t max_pfn)
{
    if (npages == 0) {
        return BLIMP_S_EINVAL;
    }
    if (pfn >= max_pfn || npages > max_pfn - pfn) {
        return BLIMP_S_ERANGE;
    }
    return BLIMP_S_OK;
}

int blimp_decode_seal(const BlimpReq *req, uint32_t i, BlimpSeal *out, uint64_t max_pfn)
{
    const uint8_t *e;

    if (req->type != BLIMP_REQ_SEAL || i >= req->count ||
        (size_t)(i + 1) * BLIMP_SEAL_ENTRY_SIZE > req->payload_len) {
        return BLIMP_S_EINVAL;
    }
    e = req->payload + (size_t)i * BLIMP_SEAL_ENTRY_SIZE;
    out->pfn = blimp_le64(e);
    out->npages = blimp_le32(e + 8);
    out->flags = blimp_le32(e + 12);
    out->hash = blimp_le64(e + 16);
    if (out->flags & ~BLIMP_SEAL_F_KNOWN) {
        return BLIMP_S_EINVAL;
    }
    return check_run(out->pfn, out->npages, max_pfn);
}

int blimp_decode_unseal(const BlimpReq *req, uint32_t i, BlimpSeal *out, uint64_t max_pfn)
{
    const uint8_t *e;

    if (req->type != BLIMP_REQ_UNSEAL || i >= req->count ||
        (size_t)(i + 1) * BLIMP_UNSEAL_ENTRY_SIZE > req->payload_len) {
        return BLIMP_S_EINVAL;
    }
    e = req->payload + (size_t)i * BLIMP_UNSEAL_ENTRY_SIZE;
    out->pfn = blimp_le64(e);
    out->npages = blimp_le32(e + 8);
    out->flags = 0;
    out->hash = 0;
    if (blimp_le32(e + 12) != 0) {
        return BLIMP_S_EINVAL;
    }
    return check_run(out->pfn, out->npages, max_pfn);
}

/* ---- page states ----------------------------------------------------------------------- */

bool blimp_pstate_valid(uint8_t v)
{
    switch (v) {
    case BLIMP_PS_STABLE:
    case BLIMP_PS_UNUSED:
    case BLIMP_PS_VOLATILE:
    case BLIMP_PS_DISCARDING_UNUSED:
    case BLIMP_PS_DISCARDING_VOLATILE:
    case BLIMP_PS_DISCARDED_UNUSED:
    case BLIMP_PS_DISCARDED_VOLATILE:
        return true;
    default:
        return false;
    }
}

static bool cas8(uint8_t *p, uint8_t expect, uint8_t desired)
{
    return __atomic_compare_exchange_n(p, &expect, desired, false, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

uint64_t blimp_pstate_claim_from(uint8_t *states, uint64_t n, uint64_t *pos, uint64_t skip_lo,
                                 uint64_t skip_hi, uint64_t max_claim, bool claim_unused,
                                 BlimpRunFn emit, void *opaque, uint64_t *invalid)
{
    return blimp_pstate_claim_kinds_from(states, n, pos, skip_lo, skip_hi, max_claim,
                                         BLIMP_CLAIM_VOLATILE |
                                             (claim_unused ? BLIMP_CLAIM_UNUSED : 0u),
                                         emit, opaque, invalid);
}

uint64_t blimp_pstate_claim_kinds_from(uint8_t *states, uint64_t n, uint64_t *pos,
                                       uint64_t skip_lo, uint64_t skip_hi, uint64_t max_claim,
                                       unsigned kinds, BlimpRunFn emit, void *opaque,
                                       uint64_t *invalid)
{
    return blimp_pstate_claim_aged_from(states, n, pos, skip_lo, skip_hi, max_claim, kinds, NULL,
                                        0, 0, emit, opaque, invalid);
}

uint64_t blimp_pstate_claim_aged_from(uint8_t *states, uint64_t n, uint64_t *pos,
                                      uint64_t skip_lo, uint64_t skip_hi, uint64_t max_claim,
                                      unsigned kinds, const uint32_t *stamps, uint32_t clock,
                                      uint32_t min_age, BlimpRunFn emit, void *opaque,
                                      uint64_t *invalid)
{
    const bool claim_unused = kinds & BLIMP_CLAIM_UNUSED;
    const bool claim_volatile = kinds & BLIMP_CLAIM_VOLATILE;
    uint64_t claimed = 0, run_start = 0, run_len = 0, i;

    for (i = *pos; i < n && claimed < max_claim; i++) {
        bool got = false;
        if (i >= skip_lo && i < skip_hi) {
            i = skip_hi - 1;                    /* never the array's own pages */
        } else {
            uint8_t v = __atomic_load_n(&states[i], __ATOMIC_ACQUIRE);
            bool wanted = (v == BLIMP_PS_UNUSED && claim_unused) ||
                          (v == BLIMP_PS_VOLATILE && claim_volatile);
            if (wanted && stamps && min_age && blimp_page_age(stamps, i, clock) < min_age) {
                wanted = false;                 /* too recently used: a later pass */
            }
            if (wanted) {
                got = cas8(&states[i], v, v == BLIMP_PS_UNUSED ? BLIMP_PS_DISCARDING_UNUSED
                                                               : BLIMP_PS_DISCARDING_VOLATILE);
            } else if (!blimp_pstate_valid(v) && invalid) {
                (*invalid)++;                   /* treated as stable */
            }
        }
        if (got) {
            if (run_len == 0) {
                run_start = i;
            }
            run_len++;
            claimed++;
            continue;
        }
        if (run_len) {
            bool more = emit(opaque, run_start, run_len);
            run_len = 0;
            if (!more) {
                *pos = i + 1;
                return claimed;
            }
        }
    }
    *pos = i < n ? i : n;
    if (run_len) {
        emit(opaque, run_start, run_len);
    }
    return claimed;
}

uint64_t blimp_pstate_claim(uint8_t *states, uint64_t n, uint64_t skip_lo, uint64_t skip_hi,
                            uint64_t max_claim, bool claim_unused, BlimpRunFn emit,
                            void *opaque, uint64_t *invalid)
{
    uint64_t pos = 0;

    return blimp_pstate_claim_from(states, n, &pos, skip_lo, skip_hi, max_claim, claim_unused,
                                   emit, opaque, invalid);
}

uint64_t blimp_pstate_guard_claim(uint8_t *states, uint64_t n, uint64_t skip_lo,
                                  uint64_t skip_hi, uint64_t first, uint64_t count,
                                  BlimpRunFn emit, void *opaque, uint64_t *already,
                                  uint64_t *refused, uint64_t *outside)
{
    uint64_t claimed = 0, run_start = 0, run_len = 0, inside, i;

    /* indices past the array (or past 2^64) are not ours to decide */
    inside = first < n ? (count < n - first ? count : n - first) : 0;
    if (outside) {
        *outside += count - inside;
    }
    for (i = first; i < first + inside; i++) {
        bool got = false;
        if (i >= skip_lo && i < skip_hi) {
            if (refused) {
                (*refused)++;                   /* the array's own pages: never */
            }
        } else {
            uint8_t v = __atomic_load_n(&states[i], __ATOMIC_ACQUIRE);
            if (v == BLIMP_PS_UNUSED) {
                got = cas8(&states[i], v, BLIMP_PS_DISCARDING_UNUSED);
                if (!got && refused) {
                    (*refused)++;               /* the guest took it meanwhile */
                }
            } else if (v == BLIMP_PS_DISCARDED_UNUSED) {
                if (already) {
                    (*already)++;
                }
            } else if (refused) {
                (*refused)++;
            }
        }
        if (got) {
            if (run_len == 0) {
                run_start = i;
            }
            run_len++;
            claimed++;
            continue;
        }
        if (run_len) {
            emit(opaque, run_start, run_len);
            run_len = 0;
        }
    }
    if (run_len) {
        emit(opaque, run_start, run_len);
    }
    return claimed;
}

uint64_t blimp_pstate_finish(uint8_t *states, uint64_t first, uint64_t count, bool discarded,
                             uint64_t *n_unused, uint64_t *n_volatile)
{
    uint64_t changed = 0;

    for (uint64_t i = first; i < first + count; i++) {
        uint8_t v = __atomic_load_n(&states[i], __ATOMIC_ACQUIRE);
        uint8_t to;
        if (v == BLIMP_PS_DISCARDING_UNUSED) {
            to = discarded ? BLIMP_PS_DISCARDED_UNUSED : BLIMP_PS_UNUSED;
        } else if (v == BLIMP_PS_DISCARDING_VOLATILE) {
            to = discarded ? BLIMP_PS_DISCARDED_VOLATILE : BLIMP_PS_VOLATILE;
        } else {
            continue;       /* not ours (the guest must not write DISCARDING values) */
        }
        if (cas8(&states[i], v, to)) {
            changed++;
            if (v == BLIMP_PS_DISCARDING_UNUSED && n_unused) {
                (*n_unused)++;
            } else if (v == BLIMP_PS_DISCARDING_VOLATILE && n_volatile) {
                (*n_volatile)++;
            }
        }
    }
    return changed;
}

/* ---- sharing hints: marked runs -------------------------------------------------------- */

size_t blimp_hints_to_runs(const BlimpSeal *hints, size_t n, uint64_t gap, size_t max_runs,
                           BlimpHintPred eligible, BlimpGapPred bridgeable, void *opaque,
                           BlimpRun *out, uint64_t *skipped, uint64_t *bad)
{
    size_t i, k = 0;
    uint64_t end = 0;           /* end of out[k - 1] */

    for (i = 0; i < n; i++) {
        const BlimpSeal *h = &hints[i];

        if (h->npages == 0 || h->pfn > UINT64_MAX - h->npages || (k && h->pfn < end)) {
            if (bad) {
                (*bad)++;
            }
            continue;
        }
        if (eligible && !eligible(opaque, h)) {
            continue;
        }
        if (k && h->pfn - end <= gap &&
            (h->pfn == end || !bridgeable || bridgeable(opaque, end, h->pfn))) {
            end = h->pfn + h->npages;                   /* join the previous run */
            out[k - 1].npages = end - out[k - 1].pfn;
            continue;
        }
        if (k >= max_runs) {
            if (skipped) {
                (*skipped)++;
            }
            continue;
        }
        out[k].pfn = h->pfn;
        out[k].npages = h->npages;
        end = h->pfn + h->npages;
        k++;
    }
    return k;
}

static uint64_t run_end(const BlimpRun *r)
{
    return r->pfn + (r->npages < UINT64_MAX - r->pfn ? r->npages : UINT64_MAX - r->pfn);
}

static bool runs_ok(const BlimpRun *r, size_t n)
{
    uint64_t end = 0;
    bool any = false;
    size_t i;

    for (i = 0; i < n; i++) {
        if (run_end(&r[i]) == r[i].pfn) {
            continue;                                   /* empty */
        }
        if (any && r[i].pfn < end) {
            return false;
        }
        end = run_end(&r[i]);
        any = true;
    }
    return true;
}

/* Skip runs that are empty or end at or before @x. */
static size_t runs_skip(const BlimpRun *r, size_t n, size_t i, uint64_t x)
{
    while (i < n && (run_end(&r[i]) == r[i].pfn || run_end(&r[i]) <= x)) {
        i++;
    }
    return i;
}

bool blimp_runs_diff(const BlimpRun *old, size_t n_old, const BlimpRun *new_runs,
                     size_t n_new, BlimpRunFn drop, BlimpRunFn add, void *opaque)
{
    size_t i = 0, j = 0;
    uint64_t x = 0, pa = 0, pb = 0;
    int pk = 0;                 /* pending range [pa, pb): 0 none, 1 drop, 2 add */

    if (!runs_ok(old, n_old) || !runs_ok(new_runs, n_new)) {
        return false;
    }
    for (;;) {
        bool in_o, in_n;
        uint64_t next = UINT64_MAX;
        int kind;

        i = runs_skip(old, n_old, i, x);
        j = runs_skip(new_runs, n_new, j, x);
        if (i >= n_old && j >= n_new) {
            break;
        }
        in_o = i < n_old && old[i].pfn <= x;
        in_n = j < n_new && new_runs[j].pfn <= x;
        if (i < n_old) {
            next = in_o ? run_end(&old[i]) : old[i].pfn;
        }
        if (j < n_new) {
            uint64_t b = in_n ? run_end(&new_runs[j]) : new_runs[j].pfn;
            next = b < next ? b : next;
        }
        /* [x, next) has one membership; next > x (runs ending at or before x are skipped) */
        kind = in_o == in_n ? 0 : in_o ? 1 : 2;
        if (kind && kind == pk && pb == x) {
            pb = next;                                  /* coalesce */
        } else if (kind) {
            if (pk && !(pk == 1 ? drop : add)(opaque, pa, pb - pa)) {
                return true;
            }
            pk = kind;
            pa = x;
            pb = next;
        }
        x = next;
    }
    if (pk) {
        (pk == 1 ? drop : add)(opaque, pa, pb - pa);
    }
    return true;
}

/* ---- page ages ------------------------------------------------------------------------- */

uint64_t blimp_age_block_bytes(uint64_t npages)
{
    return BLIMP_AGE_HDR_SIZE + npages * 4;     /* npages <= max_pfn < 2^52: no overflow */
}

int blimp_decode_pstate_ages(const BlimpReq *req, BlimpPstateAgesReg *ages,
                             uint64_t registered_npages, uint64_t max_pfn)
{
    uint64_t bytes, end;

    if (req->type != BLIMP_REQ_PSTATE_AGES || req->payload_len != BLIMP_PSTATE_AGES_SIZE) {
        return BLIMP_S_EINVAL;
    }
    ages->ages_gpa = blimp_le64(req->payload);
    ages->npages = blimp_le64(req->payload + 8);
    ages->reserved = blimp_le64(req->payload + 16);
    if (ages->reserved != 0 || (ages->ages_gpa & (BLIMP_PAGE_SIZE - 1)) ||
        registered_npages == 0 || ages->npages != registered_npages) {
        return BLIMP_S_EINVAL;                  /* ages need the array they describe */
    }
    if (max_pfn > (UINT64_MAX >> BLIMP_PAGE_SHIFT) || ages->npages > max_pfn) {
        return BLIMP_S_ERANGE;
    }
    bytes = blimp_age_block_bytes(ages->npages);
    end = ages->ages_gpa + bytes;
    if (end < ages->ages_gpa || end > (max_pfn << BLIMP_PAGE_SHIFT)) {
        return BLIMP_S_ERANGE;                  /* wraps, or reaches past guest RAM */
    }
    return BLIMP_S_OK;
}

uint32_t blimp_page_age(const uint32_t *stamps, uint64_t i, uint32_t clock)
{
    uint32_t raw = __atomic_load_n(&stamps[i], __ATOMIC_RELAXED), stamp;
    stamp = blimp_le32((const uint8_t *)&raw);
    return stamp <= clock ? clock - stamp : 0;
}

unsigned blimp_age_bucket(uint32_t age_s)
{
    unsigned b = 0;
    while (age_s) {                             /* 1 + floor(log2(age)) */
        b++;
        age_s >>= 1;
    }
    return b;
}

uint32_t blimp_age_bucket_min(unsigned b)
{
    return b == 0 ? 0 : (uint32_t)1 << (b - 1);
}

void blimp_pstate_age_histogram(const uint8_t *states, const uint32_t *stamps, uint64_t n,
                                uint32_t clock, uint64_t skip_lo, uint64_t skip_hi,
                                BlimpAgeHistogram *h)
{
    uint64_t i;

    *h = (BlimpAgeHistogram){0};
    for (i = 0; i < n; i++) {
        uint8_t v;
        unsigned b;
        if (i >= skip_lo && i < skip_hi) {
            h->stable++;                        /* the array's own pages */
            continue;
        }
        v = __atomic_load_n(&states[i], __ATOMIC_ACQUIRE);
        switch (v) {
        case BLIMP_PS_UNUSED:
        case BLIMP_PS_VOLATILE:
            b = stamps ? blimp_age_bucket(blimp_page_age(stamps, i, clock)) : 0;
            if (v == BLIMP_PS_UNUSED) {
                h->unused[b]++;
            } else {
                h->volatile_pages[b]++;
            }
            break;
        case BLIMP_PS_STABLE:
            h->stable++;
            break;
        case BLIMP_PS_DISCARDED_UNUSED:
        case BLIMP_PS_DISCARDED_VOLATILE:
            h->discarded++;
            break;
        case BLIMP_PS_DISCARDING_UNUSED:
        case BLIMP_PS_DISCARDING_VOLATILE:
            h->in_flight++;
            break;
        default:
            h->invalid++;
        }
    }
}
