// Test helpers: host memory standing in for guest RAM (virt == "phys", as in the guest's identity
// map), a page-state array over it, and a fake device sweep that discards by zeroing.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "mm/page_allocator.h"
#include "mm/page_states/page_states.h"
#include "mm/page_states/protocol.h"

namespace blimp::mm::page_states::test {

constexpr uint64_t kMiB = 1ull << 20;

struct Ram {
  explicit Ram(uint64_t size) : size(size) {
    mem = static_cast<uint8_t*>(std::aligned_alloc(4 * kMiB, size));
    std::memset(mem, 0xa5, size);  // garbage, like RAM after firmware
  }
  ~Ram() { std::free(mem); }
  Ram(const Ram&) = delete;
  PhysAddr base() const { return reinterpret_cast<PhysAddr>(mem); }
  uint64_t pages() const { return size / kPageSize; }
  uint64_t size;
  uint8_t* mem;
};

// The device's sweep (spec 4.3) over an array describing `ram`: claim, "discard" each claimed
// run by zeroing it, publish. With `fail_every` > 0 every n-th run is put back undiscarded.
struct SweepResult {
  uint64_t claimed = 0, runs = 0, discarded_unused = 0, discarded_volatile = 0, put_back = 0;
};
inline SweepResult fake_sweep(uint8_t* states, uint64_t npages, uint8_t* ram,
                              uint64_t fail_every = 0) {
  SweepResult r;
  struct Run {
    uint64_t first, count;
  };
  static thread_local Run runs[1 << 16];
  uint64_t nruns = 0;
  r.claimed = host_claim(states, npages, ~0ull, true, [&](uint64_t f, uint64_t c) {
    runs[nruns++] = Run{f, c};
    return nruns < (1 << 16);
  });
  r.runs = nruns;
  for (uint64_t i = 0; i < nruns; ++i) {
    bool ok = !(fail_every && i % fail_every == fail_every - 1);
    if (ok) {
      std::memset(ram + runs[i].first * kPageSize, 0, runs[i].count * kPageSize);
    } else {
      r.put_back += runs[i].count;
    }
    host_finish(states, runs[i].first, runs[i].count, ok, &r.discarded_unused,
                &r.discarded_volatile);
  }
  return r;
}

}  // namespace blimp::mm::page_states::test
