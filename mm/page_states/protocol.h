// The page-state protocol (docs/spec-virtio-balloon-blimp.md section 4, docs/page-states.md):
// one byte per guest page frame, shared with the host, changed by one-byte compare-and-swap on
// both sides. This header holds the state values and every transition either side makes, as
// small functions over one byte, so that the guest, the host-side stress test's fake host and
// the unit tests all run exactly the same code. Freestanding and host-compilable.
//
// Ownership of a byte:
//   guest-owned  STABLE, UNUSED, VOLATILE, DISCARDED_UNUSED, DISCARDED_VOLATILE
//   host-owned   DISCARDING_UNUSED, DISCARDING_VOLATILE (the guest never writes such a byte)
// The host takes a byte only by CAS from UNUSED/VOLATILE to the matching DISCARDING value, and
// the only other value it ever stores is DISCARDED_x or x into a byte it holds as DISCARDING_x.
// So a STABLE byte is written by the guest alone, and the guest may store into it; every other
// guest transition is a CAS, and a CAS that meets DISCARDING_x waits until the host is done.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/atomic.h"

namespace blimp::mm::page_states {

enum State : uint8_t {
  kStable = 0x00,
  kUnused = 0x01,
  // 0x02 was POT_VOLATILE (CMM2's "potentially volatile"). Nothing produced it, and a host
  // cannot act on "maybe" without a way to ask the guest, so it left the protocol: 0x02 is
  // reserved, and a host treats it like any undefined byte (as STABLE, counted invalid).
  kVolatile = 0x03,
  kDiscardingUnused = 0x41,
  kDiscardingVolatile = 0x43,
  kDiscardedUnused = 0x81,
  kDiscardedVolatile = 0x83,
};

constexpr bool is_valid(uint8_t v) {
  return v == kStable || v == kUnused || v == kVolatile || v == kDiscardingUnused ||
         v == kDiscardingVolatile || v == kDiscardedUnused || v == kDiscardedVolatile;
}
constexpr bool is_discarding(uint8_t v) {
  return v == kDiscardingUnused || v == kDiscardingVolatile;
}
constexpr bool is_discarded(uint8_t v) { return v == kDiscardedUnused || v == kDiscardedVolatile; }
const char* state_name(uint8_t v);

inline uint8_t load_state(const volatile uint8_t* b) {
  return __atomic_load_n(const_cast<const uint8_t*>(b), __ATOMIC_ACQUIRE);
}

// ---- guest side ---------------------------------------------------------------------------------

// The guest's one-byte CAS: loads the byte and, if it holds `expected`, compare-exchanges it to
// `desired`, all in one branch-free, 64-byte-aligned instruction sequence (page_states.cpp). If
// the load finds anything else, the cmpxchg goes to a private dummy byte instead and the call
// fails: the shared byte is then never written. Why: under single-threaded TCG a cmpxchg is a
// load and a store that also writes back on failure, and the device claims with the vCPUs
// paused, which can only happen between translation blocks. A branch-free sequence inside one
// aligned 64-byte block is one translation block, so no claim can land between our load and our
// cmpxchg, and a cmpxchg whose load saw DISCARDING_x (which the host may be publishing right
// now) is never issued on the shared byte. See docs/page-states.md, "TCG". Host builds run the
// same code (x86_64), other hosts a plain CAS.
extern "C" bool blimp_pstate_cas(volatile uint8_t* b, uint8_t expected, uint8_t desired);
inline bool guest_cas(volatile uint8_t* b, uint8_t expected, uint8_t desired) {
#if defined(__x86_64__)
  return blimp_pstate_cas(b, expected, desired);
#else
  return cas_byte(b, expected, desired);
#endif
}

// A wait on a DISCARDING byte lasts at most one batch of the host's sweep: the host claims,
// discards and publishes a bounded number of pages at a time (spec section 4.4), so it is a few
// milliseconds even on a slow host. A wait past kLongWaitSpins pause iterations is reported,
// once per wait, through the hook (the guest logs it; tests count it), and goes on: until the
// host publishes the byte the page's content is the host's, and using it could lose a write.
using LongWaitHook = void (*)(const volatile uint8_t* byte, uint64_t spins);
inline LongWaitHook g_long_wait_hook = nullptr;
constexpr uint64_t kLongWaitSpins = 1ull << 24;

// Waits while the host holds the byte (DISCARDING_x); returns the first guest-owned value seen.
// `spins` (optional) counts the pause iterations, so callers can report contention.
inline uint8_t wait_settled(const volatile uint8_t* b, uint64_t* spins = nullptr) {
  uint8_t v = load_state(b);
  uint64_t here = 0;
  while (is_discarding(v)) {
    cpu_relax();
    if (spins) ++*spins;
    if (++here == kLongWaitSpins && g_long_wait_hook) g_long_wait_hook(b, here);
    v = load_state(b);
  }
  return v;
}

// Makes the page STABLE, after which the guest may read and write it and the host will not
// discard it. Returns the value it replaced: kStable if it already was stable; kDiscardedUnused
// or kDiscardedVolatile if the host had discarded it (the page reads as zeros); kVolatile
// if volatile content is intact; kUnused for a free page the host left alone.
// The CAS is only attempted on a value just seen guest-owned: see docs/page-states.md on TCG.
inline uint8_t make_stable(volatile uint8_t* b, uint64_t* spins = nullptr) {
  for (;;) {
    uint8_t v = wait_settled(b, spins);
    if (v == kStable) return kStable;
    if (guest_cas(b, v, kStable)) return v;
    // The host claimed it between our load and the CAS (or, on a host-compiled test, changed it
    // in any other legal way): look again.
  }
}

// STABLE -> UNUSED / VOLATILE. The caller holds the byte STABLE (the host never
// writes a STABLE byte), so a store suffices; release ordering makes every earlier write to the
// page happen before the host can see the page as discardable.
inline void release_stable(volatile uint8_t* b, uint8_t to) {
  __atomic_store_n(const_cast<uint8_t*>(b), to, __ATOMIC_RELEASE);
}

// The page is (or stays) free: leaves UNUSED and DISCARDED_UNUSED alone (a discarded free page
// stays known-zero while it sits on the free lists), turns anything else into UNUSED. Volatile
// values go through STABLE (VOLATILE -> STABLE -> UNUSED), DISCARDED_VOLATILE by one CAS.
inline void make_unused(volatile uint8_t* b, uint64_t* spins = nullptr) {
  for (;;) {
    uint8_t v = wait_settled(b, spins);
    if (v == kUnused || v == kDiscardedUnused) return;
    if (v == kStable) {
      release_stable(b, kUnused);
      return;
    }
    uint8_t to = is_discarded(v) ? kUnused : kStable;
    if (guest_cas(b, v, to)) {
      if (to == kStable) release_stable(b, kUnused);
      return;
    }
  }
}

// Volatile memory. pin: any state -> STABLE; true when the content survived (the host did not
// discard the page since it was unpinned). unpin: STABLE -> VOLATILE (release).
inline bool pin(volatile uint8_t* b, uint64_t* spins = nullptr) {
  return !is_discarded(make_stable(b, spins));
}
inline void unpin(volatile uint8_t* b) { release_stable(b, kVolatile); }

// ---- host side (what the device does; used by the fake host of the tests) -----------------------

// One claim pass over states[0, n): CAS UNUSED -> DISCARDING_UNUSED (only if `claim_unused`; the
// device refuses with a nonzero poison value) and VOLATILE -> DISCARDING_VOLATILE, at most
// `max_claim` pages. Calls emit(first, count) for every maximal run of claimed bytes; emit
// returns false to stop. Returns the pages claimed.
template <typename Emit>
uint64_t host_claim(uint8_t* states, uint64_t n, uint64_t max_claim, bool claim_unused,
                    Emit&& emit) {
  uint64_t claimed = 0, run_start = 0, run_len = 0;
  for (uint64_t i = 0; i < n && claimed < max_claim; ++i) {
    uint8_t v = __atomic_load_n(&states[i], __ATOMIC_ACQUIRE);
    bool got = false;
    if (v == kUnused && claim_unused) {
      got = cas_byte(&states[i], v, kDiscardingUnused);
    } else if (v == kVolatile) {
      got = cas_byte(&states[i], v, kDiscardingVolatile);
    }
    if (got) {
      if (run_len == 0) run_start = i;
      ++run_len;
      ++claimed;
      continue;
    }
    if (run_len) {
      bool more = emit(run_start, run_len);
      run_len = 0;
      if (!more) return claimed;
    }
  }
  if (run_len) emit(run_start, run_len);
  return claimed;
}

// Publishes the outcome for claimed bytes states[first, first + count): DISCARDING_x ->
// DISCARDED_x when the discard happened, back to x when it did not. Only ever touches bytes the
// host holds. Counts what it published.
inline void host_finish(uint8_t* states, uint64_t first, uint64_t count, bool discarded,
                        uint64_t* unused_out = nullptr, uint64_t* volatile_out = nullptr) {
  for (uint64_t i = first; i < first + count; ++i) {
    uint8_t v = __atomic_load_n(&states[i], __ATOMIC_ACQUIRE);
    uint8_t to;
    if (v == kDiscardingUnused) {
      to = discarded ? kDiscardedUnused : kUnused;
      if (unused_out && discarded) ++*unused_out;
    } else if (v == kDiscardingVolatile) {
      to = discarded ? kDiscardedVolatile : kVolatile;
      if (volatile_out && discarded) ++*volatile_out;
    } else {
      continue;  // not ours: never written
    }
    __atomic_store_n(&states[i], to, __ATOMIC_RELEASE);
  }
}

}  // namespace blimp::mm::page_states
