// Batching of sharing hints (spec section 5.4): SEAL entries (pfn run, XXH3-64 hash, ZERO and
// WRITABLE flags) and UNSEAL entries, up to a request's worth (at most 4096 entries) at a time.
//
// Run merging: a page that directly follows the last entry's run and has the same hash and the
// same flags extends that run instead of taking a new entry (runs longer than one page are for
// pages with identical content, typically zero). UNSEAL runs merge when adjacent or overlapping.
//
// A request that timed out may still be read by the device (mm/device_channel.h), and its entries
// are the batcher's buffer: so the batcher wedges, never writes the buffer again and drops (and
// counts) every later hint, until device_reset() says a reset took the buffer back. Dropping is
// safe because hints are advisory: the host re-checks every page's content before merging.
//
// The batchers are transport-agnostic: a SendFn carries one request (in the guest:
// Balloon::blimp_request; in the unit tests: a fake device). Host-compilable.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/blimp_wire.h"
#include "lib/error.h"

namespace blimp::mm::sharing {

using wire::BlimpResponse;
using wire::BlimpSealEntry;
using wire::BlimpUnsealEntry;

// Sends one blimpq request of `count` entries of `entry_size` bytes; returns the device's answer.
using SendFn = ErrorOr<BlimpResponse> (*)(uint16_t type, const void* entries, uint32_t count,
                                          size_t entry_size, void* ctx);

struct BatchStats {
  uint64_t requests = 0;        // requests answered by the device
  uint64_t entries = 0;         // entries sent
  uint64_t pages = 0;           // pages covered by the entries sent
  uint64_t zero_pages = 0;      // of which in ZERO runs
  uint64_t writable_pages = 0;  // of which in WRITABLE runs (merge candidates, not sealed)
  uint64_t accepted = 0;        // entries the device accepted
  uint64_t rejected = 0;        // entries the device rejected
  uint64_t send_errors = 0;     // requests that failed (no answer, unsupported, busy for too long)
  uint64_t dropped_pages = 0;   // pages not sent: ENOSPC or a timeout earlier, or send failed
  uint32_t last_status = 0;     // status of the last response
  bool limit_reached = false;   // ENOSPC seen: no more SEALs are sent
  // A send timed out: the device may still read the buffer, so nothing more is written to it or
  // sent until device_reset().
  bool wedged = false;
};

class SealBatcher {
 public:
  // `buf` holds `capacity` entries (1..4096) and must stay valid (and, in the guest, be RAM the
  // device can read: identity mapped) for the batcher's life.
  SealBatcher(BlimpSealEntry* buf, uint32_t capacity, SendFn send, void* ctx);

  // Adds `npages` sealed pages starting at `pfn`, each with content hash `hash`.
  void add(uint64_t pfn, uint64_t hash, bool zero, uint32_t npages = 1) {
    add_entry(pfn, hash, zero ? wire::kBlimpSealZero : 0, npages);
  }
  // The same for merge candidates the guest keeps writing (WRITABLE): `hash` is their content
  // now, and no UNSEAL will ever come for them.
  void add_candidate(uint64_t pfn, uint64_t hash, bool zero, uint32_t npages = 1) {
    add_entry(pfn, hash, (zero ? wire::kBlimpSealZero : 0) | wire::kBlimpSealWritable, npages);
  }
  // Sends what is pending, then zeroes the sent entries if the device answered. False if the
  // request failed or was rejected in part.
  bool flush();

  uint32_t pending() const { return count_; }
  const BatchStats& stats() const { return stats_; }
  // Whether add() still queues hints (no ENOSPC, not wedged): else hashing pages is wasted work.
  bool accepting() const { return !stats_.limit_reached && !stats_.wedged; }
  // The device was reset and forgot every hint: an ENOSPC it answered before no longer holds, and
  // a device that completed a reset reads no request it was given before, so the buffer is ours.
  void device_reset() {
    stats_.limit_reached = false;
    stats_.wedged = false;
  }

 private:
  void add_entry(uint64_t pfn, uint64_t hash, uint32_t flags, uint32_t npages);

  BlimpSealEntry* buf_;
  uint32_t capacity_;
  uint32_t count_ = 0;
  SendFn send_;
  void* ctx_;
  BatchStats stats_;
};

class UnsealBatcher {
 public:
  UnsealBatcher(BlimpUnsealEntry* buf, uint32_t capacity, SendFn send, void* ctx);
  void add(uint64_t pfn, uint64_t npages);
  bool flush();  // as SealBatcher::flush
  uint32_t pending() const { return count_; }
  const BatchStats& stats() const { return stats_; }
  void device_reset() { stats_.wedged = false; }  // as SealBatcher::device_reset

 private:
  BlimpUnsealEntry* buf_;
  uint32_t capacity_;
  uint32_t count_ = 0;
  SendFn send_;
  void* ctx_;
  BatchStats stats_;
};

// Shared by both batchers: sends, retrying while the queue is busy, and accounts the answer
// (a Timeout sets stats.wedged: the caller must leave `entries` alone until a device reset).
bool send_batch(SendFn send, void* ctx, uint16_t type, const void* entries, uint32_t count,
                size_t entry_size, uint64_t pages, BatchStats& stats);

}  // namespace blimp::mm::sharing
