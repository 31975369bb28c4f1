#include "mm/sharing/hint_batch.h"

#include "lib/atomic.h"

namespace blimp::mm::sharing {

namespace {
constexpr int kBusyRetries = 1000;
constexpr uint32_t kMaxRun = 0xffffffffu;

// Clears the entries of a request the device has answered. The answer ends the device's use of
// them (a used buffer is the driver's again: virtio 1.2, section 2.7.8), and left in place they are
// dead per-VM content (pfns, hashes of pages that differ between VMs) that keeps the buffer's pages
// apart from every other VM's: zeroed, the pages are alike in every VM and the host merges them or,
// in a split huge page, maps its zero page (docs/experiments.md, experiment 4). Not after a failed
// send: a device that timed out may still read them (mm/device_channel.h).
void scrub(void* entries, size_t bytes) { __builtin_memset(entries, 0, bytes); }

uint32_t clamp_capacity(uint32_t c) {
  if (c == 0) return 1;
  return c > wire::kBlimpMaxEntries ? wire::kBlimpMaxEntries : c;
}
}  // namespace

bool send_batch(SendFn send, void* ctx, uint16_t type, const void* entries, uint32_t count,
                size_t entry_size, uint64_t pages, BatchStats& stats) {
  if (count == 0) return true;
  ErrorOr<BlimpResponse> r = Error::Busy;
  for (int i = 0; i < kBusyRetries; i++) {
    r = send(type, entries, count, entry_size, ctx);
    if (r.is_error() && r.error() == Error::Busy) {
      cpu_relax();
      continue;
    }
    break;
  }
  if (r.is_error()) {
    stats.send_errors++;
    stats.dropped_pages += pages;
    if (r.error() == Error::Timeout) stats.wedged = true;
    return false;
  }
  const BlimpResponse& resp = r.value();
  stats.requests++;
  stats.entries += count;
  stats.pages += pages;
  stats.accepted += resp.accepted;
  stats.rejected += resp.rejected;
  stats.last_status = resp.status;
  if (resp.status == wire::kBlimpEnospc) stats.limit_reached = true;
  return resp.status == wire::kBlimpOk && resp.rejected == 0;
}

SealBatcher::SealBatcher(BlimpSealEntry* buf, uint32_t capacity, SendFn send, void* ctx)
    : buf_(buf), capacity_(clamp_capacity(capacity)), send_(send), ctx_(ctx) {}

void SealBatcher::add_entry(uint64_t pfn, uint64_t hash, uint32_t flags, uint32_t npages) {
  if (npages == 0) return;
  if (!accepting()) {
    stats_.dropped_pages += npages;
    return;
  }
  if (flags & wire::kBlimpSealZero) stats_.zero_pages += npages;
  if (flags & wire::kBlimpSealWritable) stats_.writable_pages += npages;
  if (count_) {
    BlimpSealEntry& last = buf_[count_ - 1];
    if (last.pfn + last.npages == pfn && last.hash == hash && last.flags == flags &&
        uint64_t{last.npages} + npages <= kMaxRun) {
      last.npages += npages;
      return;
    }
  }
  if (count_ == capacity_) {
    flush();
    if (!accepting()) {
      stats_.dropped_pages += npages;
      return;
    }
  }
  buf_[count_++] = BlimpSealEntry{pfn, npages, flags, hash};
}

bool SealBatcher::flush() {
  if (count_ == 0) return true;
  uint64_t pages = 0;
  for (uint32_t i = 0; i < count_; i++) pages += buf_[i].npages;
  const uint64_t answered = stats_.requests;
  bool ok = send_batch(send_, ctx_, wire::kBlimpSeal, buf_, count_, sizeof(BlimpSealEntry), pages,
                       stats_);
  if (stats_.requests != answered) scrub(buf_, count_ * sizeof(BlimpSealEntry));
  count_ = 0;
  return ok;
}

UnsealBatcher::UnsealBatcher(BlimpUnsealEntry* buf, uint32_t capacity, SendFn send, void* ctx)
    : buf_(buf), capacity_(clamp_capacity(capacity)), send_(send), ctx_(ctx) {}

void UnsealBatcher::add(uint64_t pfn, uint64_t npages) {
  while (npages) {
    if (stats_.wedged) {
      stats_.dropped_pages += npages;
      return;
    }
    uint32_t n = npages > kMaxRun ? kMaxRun : static_cast<uint32_t>(npages);
    bool merged = false;
    if (count_) {
      BlimpUnsealEntry& last = buf_[count_ - 1];
      uint64_t end = last.pfn + last.npages;
      if (pfn >= last.pfn && pfn <= end) {
        uint64_t new_end = pfn + n > end ? pfn + n : end;
        if (new_end - last.pfn <= kMaxRun) {
          last.npages = static_cast<uint32_t>(new_end - last.pfn);
          merged = true;
        }
      }
    }
    if (!merged) {
      if (count_ == capacity_) {
        flush();
        if (stats_.wedged) continue;  // dropped at the top of the loop
      }
      buf_[count_++] = BlimpUnsealEntry{pfn, n, 0};
    }
    pfn += n;
    npages -= n;
  }
}

bool UnsealBatcher::flush() {
  if (count_ == 0) return true;
  uint64_t pages = 0;
  for (uint32_t i = 0; i < count_; i++) pages += buf_[i].npages;
  const uint64_t answered = stats_.requests;
  bool ok = send_batch(send_, ctx_, wire::kBlimpUnseal, buf_, count_, sizeof(BlimpUnsealEntry),
                       pages, stats_);
  if (stats_.requests != answered) scrub(buf_, count_ * sizeof(BlimpUnsealEntry));
  count_ = 0;
  return ok;
}

}  // namespace blimp::mm::sharing
