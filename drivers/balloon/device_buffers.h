// The balloon's device-visible buffers and their tokens: the one home of every piece of memory
// the balloon lends the device.
//
// # Ownership (docs/balloon.md, "Timeouts, broken queues and resets")
// Memory the device may still read or write is never reused until the device has returned it
// or has been reset. Each use has its own buffer here (no two operations share one), and each
// buffer posted to a queue carries its own BufferToken:
//
//   idle ──post()──► in flight ──accept() on the same queue──► idle
//                        │
//                        └──forget_all() (the device was reset: it holds nothing)──► idle
//
// A completion whose token is not in flight on the queue it came back on is a host fault: the
// driver resets the device rather than guess what the buffer was. Host-compilable.
#pragma once

#include <cstddef>
#include <cstdint>

#include "drivers/balloon/balloon_protocol.h"
#include "drivers/balloon/balloon_stats.h"
#include "drivers/virtio/virtqueue.h"
#include "mm/page.h"

namespace blimp::balloon {

constexpr size_t kPfnsPerBuffer = 4096;  // 16 KiB of PFNs: 16 MiB of balloon
constexpr size_t kInflateBuffers = 4;    // inflate buffers in flight at once
constexpr size_t kRunsPerBuffer = 512;
constexpr size_t kReportBatch = 256;   // blocks per reporting buffer (indirect table)
constexpr size_t kHintRuns = 64;       // runs isolated per free page hinting step
constexpr size_t kHintsInFlight = 32;  // hint buffers queued before waiting for them

struct BufferToken {
  uint16_t queue = 0;
  uint16_t slot = 0;
  uint32_t generation = 0;  // of the post that put it in flight
  bool in_flight = false;
  uint64_t pages = 0;     // pages the buffer carries (inflate: added to `actual` on completion)
  uint32_t used_len = 0;  // what the device said it wrote, on completion
};

// Every token the balloon owns. post/accept/forget_all keep the in-flight flags true.
class BufferTokens {
 public:
  BufferToken inflate[kInflateBuffers];
  BufferToken deflate;
  BufferToken stats;
  BufferToken hint_cmd;
  BufferToken hint[kHintsInFlight];
  BufferToken report;
  BufferToken blimp;

  // Marks `t` in flight on `queue`. False if it already is (a driver bug: never post twice).
  bool post(BufferToken& t, uint16_t queue, uint16_t slot, uint64_t pages) {
    if (t.in_flight) return false;
    t.queue = queue;
    t.slot = slot;
    t.generation = ++generation_;
    t.pages = pages;
    t.used_len = 0;
    t.in_flight = true;
    return true;
  }
  // Undoes post() for a buffer the queue refused (never made available).
  void unpost(BufferToken& t) { t.in_flight = false; }

  // A completion came back on `queue` with `raw` as its token. The token if it is one of ours in
  // flight on that queue (now idle again); nullptr if not (a host fault).
  BufferToken* accept(void* raw, uint16_t queue, uint32_t len) {
    BufferToken* t = find(raw);
    if (!t || !t->in_flight || t->queue != queue) return nullptr;
    t->in_flight = false;
    t->used_len = len;
    return t;
  }

  // The device was reset: it holds no buffer any more.
  void forget_all() {
    for_each([](BufferToken& t) { t.in_flight = false; });
  }
  // Buffers in flight (all queues).
  size_t in_flight() {
    size_t n = 0;
    for_each([&](BufferToken& t) { n += t.in_flight; });
    return n;
  }
  // A free inflate slot, or nullptr when all are in flight.
  BufferToken* free_inflate() {
    for (auto& t : inflate)
      if (!t.in_flight) return &t;
    return nullptr;
  }
  uint16_t inflate_slot(const BufferToken& t) const { return uint16_t(&t - inflate); }

  template <typename F>
  void for_each(F&& f) {
    for (auto& t : inflate) f(t);
    f(deflate);
    f(stats);
    f(hint_cmd);
    for (auto& t : hint) f(t);
    f(report);
    f(blimp);
  }

 private:
  BufferToken* find(void* raw) {
    BufferToken* hit = nullptr;
    for_each([&](BufferToken& t) {
      if (&t == raw) hit = &t;
    });
    return hit;
  }
  uint32_t generation_ = 0;
};

// Device-visible memory. In the guest it lives in .bss (identity mapped, so its addresses are
// guest-physical); one field per use, so an operation never writes into memory another
// operation's buffer still points at.
struct alignas(4096) DeviceBuffers {
  uint32_t inflate_pfns[kInflateBuffers][kPfnsPerBuffer];
  uint32_t deflate_pfns[kPfnsPerBuffer];
  StatEntry stats[kMaxStats];
  uint32_t hint_cmd_id;  // the command id, then STOP, sent on the hint queue
  virtio::Segment report_segs[kReportBatch];
  BlimpRequestHeader blimp_header;
  BlimpResponse blimp_response;
};

// Driver-private scratch: never handed to the device.
struct Scratch {
  mm::PageRun runs[kRunsPerBuffer];        // inflate and deflate
  mm::PageRun report_runs[kReportBatch];   // the blocks of the report in flight
  mm::PageRun hint_runs[kHintRuns];        // isolated for the current hinting step
  mm::PageRun release_runs[kReportBatch];  // hinted ranges on their way back to the allocator
};

}  // namespace blimp::balloon
