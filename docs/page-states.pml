/*
 * Promela model of the Blimp page-state protocol (docs/page-states.md,
 * docs/spec-virtio-balloon-blimp.md section 4), one page, two guest CPUs and
 * the host. The protocol is per byte and the two sides never act on two bytes
 * at once, so one page is the whole story; the sweep over many pages is many
 * copies.
 *
 * Several guest CPUs (issue 17): the page travels between them the way the
 * allocator and the volatile-memory API hand it over. Whoever holds it
 * (`owner`) uses, frees or unpins it; a free, unpinned or cached page is
 * taken under a lock (the allocator's, a per-CPU cache's, the volatile
 * region's), modelled as the test-and-set of `owner`, by either CPU. A
 * per-CPU page cache (mm/page_allocator.h) holds a page the refill already
 * claimed STABLE: any CPU may hand it out without touching the byte, or drain
 * it back to UNUSED, also a CPU other than the one that refilled it.
 *
 * What is checked (tests/unit/page_states/run_spin.py):
 *   safety (assertions, no invalid end state, i.e. no guest stuck forever):
 *     - the host discards only a page it claimed, never one the guest holds
 *       (ghost `guest_holds`);
 *     - the guest touches the content only while the byte is STABLE;
 *     - no lost write: whatever the guest wrote to a page it still holds
 *       reads back (assert data == mine);
 *     - no use of discarded content: a pin that says "intact" finds exactly
 *       the data written before the unpin; a pin that says "lost", and an
 *       allocation of a page the host discarded while free, find zeros.
 *   liveness (LTL `settles`, weak fairness): a byte the host holds
 *     (DISCARDING_x) always comes back to the guest.
 *
 * Page ages (spec section 4.5) and ordered claims: the guest stamps the page
 * with its clock (plain stores, no ordering against the host) before the byte
 * says UNUSED or VOLATILE, and the host, reading the stamp whenever it likes,
 * claims the page in the pass whose age threshold it meets (limited sweeps go
 * oldest first). The stamp is only ever a reason for the host NOT to claim a
 * page yet, so the checks above hold whatever it reads; the model makes the
 * host act on a racing stamp to show it. Batched sweeps (section 4.3) bound
 * how long a claimed byte stays DISCARDING: here, `settles`.
 *
 * Variants (cpp defines, each MUST make spin report an error; the test checks
 * that it does, so the properties above are known to have teeth):
 *   BUG_STORE      the guest pins with a plain store instead of a CAS
 *   BUG_FREE_STORE the guest frees an unpinned volatile page with a plain
 *                  store of UNUSED instead of going through STABLE by CAS
 *   BUG_PCP_UNCLAIMED  a per-CPU cache is refilled without the page-state
 *                  claim (the page stays UNUSED while cached), so the host
 *                  may discard a page the cache then hands out
 *   TCG_NONATOMIC  the device pauses vCPUs to claim, but a guest cmpxchg is a
 *                  load + store in single-threaded TCG and a failed one writes
 *                  the old value back: a host publish inside that window is
 *                  overwritten and the byte stays DISCARDING forever (the
 *                  window described in docs/page-states.md) if the guest
 *                  compare-exchanges a value it read in an earlier block.
 *
 * Variant that MUST verify like the protocol itself:
 *   TCG_SAME_TB    the same TCG semantics, with the guest's CAS as Blimp does
 *                  it (blimp_pstate_cas): load, compare and cmpxchg in one
 *                  translation block, and no cmpxchg on the shared byte unless
 *                  the load saw the expected value.
 */

#define STABLE     0
#define UNUSED     1
#define VOLATILE   3
#define DISC_U    65   /* 0x41 DISCARDING_UNUSED   */
#define DISC_V    67   /* 0x43 DISCARDING_VOLATILE */
#define GONE_U   129   /* 0x81 DISCARDED_UNUSED    */
#define GONE_V   131   /* 0x83 DISCARDED_VOLATILE  */

#define discarding(v) ((v) == DISC_U || (v) == DISC_V)
#define discarded(v)  ((v) == GONE_U || (v) == GONE_V)

byte st = STABLE;        /* the shared byte */
byte data = 7;           /* the page content; 0 = zeros (discarded) */
bool guest_holds = true; /* ghost: the guest may touch the content */
byte in_cmpxchg = 0;     /* TCG: guest instructions under way (any CPU) */
byte owner = 1;          /* the CPU holding the page (1, 2), 0: free, unpinned or cached */
byte role = 0;           /* 0: held STABLE, 1: free (UNUSED), 2: volatile, unpinned,
                            3: in a per-CPU cache (claimed STABLE, nobody uses it) */
byte mine = 7, next = 1; /* ghost: what the page must hold, the next value to write */
bool cached_zero = false;/* ghost: the refill found the page discarded (reads zero) */
byte clock = 0;          /* the guest clock (age block header), wraps in the model */
byte stamp = 0;          /* the page's age stamp: guest-written, host-read only */

/* One-byte compare-and-swap by the guest: ok := (st == exp), st := new if ok. */
#if defined(TCG_SAME_TB)
/* What the guest runs (blimp_pstate_cas): under single-threaded TCG the
 * load, the compare and the cmpxchg are one translation block, so no claim
 * (vCPUs paused) lands inside it; the cmpxchg itself is still a load and a
 * store (written back on failure) that the host's publish can interleave
 * with; a value other than `exp` sends the cmpxchg to a dummy byte. */
#define CAS(exp, new, ok) \
  atomic { in_cmpxchg++; tmp = st }; \
  if \
  :: tmp == exp -> \
       tmp = st; \
       if :: tmp == exp -> st = new; ok = true :: else -> st = tmp; ok = false fi \
  :: else -> ok = false \
  fi; \
  in_cmpxchg--
#elif defined(TCG_NONATOMIC)
#define CAS(exp, new, ok) \
  atomic { in_cmpxchg++; tmp = st }; \
  atomic { if :: tmp == exp -> st = new; ok = true :: else -> st = tmp; ok = false fi; \
           in_cmpxchg-- }
#else
#define CAS(exp, new, ok) \
  atomic { if :: st == exp -> st = new; ok = true :: else -> ok = false fi }
#endif

/* make_stable(): wait_settled, then CAS the value seen to STABLE; `was` is
 * what it replaced. */
#ifdef BUG_STORE
#define MAKE_STABLE(was) \
  atomic { !discarding(st) -> was = st }; st = STABLE
#else
#define MAKE_STABLE(was) \
  do :: atomic { !discarding(st) -> was = st }; \
        if :: was == STABLE -> break :: else -> skip fi; \
        CAS(was, STABLE, ok); if :: ok -> break :: else -> skip fi od
#endif

/* make_unused() from STABLE: a store (the host never writes a STABLE byte). */
#define MAKE_UNUSED st = UNUSED

active [2] proctype guest() {
  byte was, tmp, me = _pid + 1;
  bool ok;
  tmp = 0;
end_idle:
  do
  :: role == 0 && owner == me ->                    /* use it */
       assert(st == STABLE && guest_holds);
       assert(data == mine);                         /* no lost write */
       if
       :: data = next; mine = next; next = (next % 3) + 1   /* write */
       :: clock = (clock + 1) % 3                           /* a second passes */
       :: guest_holds = false; stamp = clock; MAKE_UNUSED; role = 1; owner = 0   /* free */
       :: guest_holds = false; stamp = clock; st = VOLATILE; role = 2; owner = 0 /* unpin */
       :: guest_holds = false; cached_zero = false; role = 3; owner = 0 /* into a cache */
       fi
  :: atomic { role == 1 && owner == 0 -> owner = me };   /* allocate */
       MAKE_STABLE(was);
       guest_holds = true;
       assert(st == STABLE);
       if
       :: discarded(was) -> assert(data == 0)        /* known zero */
       :: else -> skip
       fi;
       data = next; mine = next; next = (next % 3) + 1;
       role = 0
  :: atomic { role == 1 && owner == 0 -> owner = me };   /* refill a per-CPU cache */
#ifdef BUG_PCP_UNCLAIMED
       was = UNUSED;
#else
       MAKE_STABLE(was);
#endif
       cached_zero = discarded(was);
       role = 3; owner = 0
  :: atomic { role == 3 && owner == 0 -> owner = me };   /* allocate from a cache */
       assert(st == STABLE);                         /* the host cannot have it */
       guest_holds = true;
       if
       :: cached_zero -> assert(data == 0)           /* the refill's zero bit */
       :: else -> skip
       fi;
       data = next; mine = next; next = (next % 3) + 1;
       role = 0
  :: atomic { role == 3 && owner == 0 -> owner = me };   /* drain a cache (any CPU) */
       stamp = clock; MAKE_UNUSED; role = 1; owner = 0
  :: atomic { role == 2 && owner == 0 -> owner = me };   /* pin */
       MAKE_STABLE(was);
       guest_holds = true;
       assert(st == STABLE);
       if
       :: was == GONE_V ->                            /* lost: regenerate */
            assert(data == 0);
            data = next; mine = next; next = (next % 3) + 1
       :: else ->                                     /* intact */
            assert(!discarded(was));
            assert(data == mine)
       fi;
       role = 0
  :: atomic { role == 2 && owner == 0 -> owner = me };   /* free an unpinned volatile page */
#ifdef BUG_FREE_STORE
       st = UNUSED;
#else
       MAKE_STABLE(was); MAKE_UNUSED;                /* VOLATILE/DISCARDED -> STABLE -> UNUSED */
#endif
       role = 1; owner = 0
  od
}

/* The device: claim by CAS with the vCPUs paused (never inside a guest
 * instruction), then discard and publish while the guest runs. */
active proctype host() {
  byte claimed, min_age, age;
end_sweep:
  do
  :: /* a pass of a limited sweep: claim only pages at least min_age old by
      * the stamp as read now (possibly stale: the guest writes it freely) */
     if :: min_age = 0 :: min_age = 1 :: min_age = 2 fi;
     age = (clock + 3 - stamp) % 3;
     atomic { in_cmpxchg == 0 && (st == UNUSED || st == VOLATILE) && age >= min_age ->
       if :: st == UNUSED -> st = DISC_U :: else -> st = DISC_V fi; claimed = st };
     assert(!guest_holds);                           /* never a page the guest holds */
     if
     :: data = 0;                                    /* madvise: the content is gone */
        assert(st == claimed);                       /* nobody wrote our byte */
        if :: claimed == DISC_U -> st = GONE_U :: else -> st = GONE_V fi
     :: assert(st == claimed);                       /* the discard failed: put back */
        if :: claimed == DISC_U -> st = UNUSED :: else -> st = VOLATILE fi
     fi
  od
}

ltl settles { [] (discarding(st) -> <> !discarding(st)) }
