#include "mm/background_churn.h"

#include "kernel/memory.h"

namespace blimp::mm {

unsigned BackgroundChurn::next_order() {
  // Five in eight blocks are single pages (the per-CPU caches' path), the rest orders 1..3 (the
  // buddy lists under the global lock, and splits and merges of larger blocks).
  switch (seq_ % 8) {
    case 5: return 1;
    case 6: return 2;
    case 7: return kMaxOrder;
    default: return 0;
  }
}

bool BackgroundChurn::check_and_free_oldest(ChurnMismatch& bad) {
  const Slot& s = slots_[head_];
  const uint64_t words = pages_of_order(s.order) * kPageSize / sizeof(uint64_t);
  const auto* w = phys_to_virt<const volatile uint64_t>(s.block);
  for (uint64_t i = 0; i < words; ++i) {
    const uint64_t want = pattern(worker_, s.seq, s.block, i);
    const uint64_t got = w[i];
    if (got != want) {
      bad = {s.block, s.order, i, want, got};
      return false;
    }
  }
  pa_.free_pages(s.block, s.order);
  head_ = (head_ + 1) % kSlots;
  --count_;
  ++counters_.checked;
  return true;
}

bool BackgroundChurn::step(ChurnMismatch& bad) {
  if (backoff_ > 0) {
    --backoff_;
    return true;
  }
  if (count_ == kSlots && !check_and_free_oldest(bad)) return false;
  const unsigned order = next_order();
  auto a = pa_.alloc_pages(order, Owner::App, kAllocNoReclaim);
  if (a.is_error()) {
    ++counters_.failed;
    ++seq_;  // the next attempt asks for another order
    // No memory: give back everything the churn holds and leave it to the others for a while.
    // Freeing only the oldest block would hand it straight back to the churn's next step.
    backoff_ = kBackoffSteps;
    return release_all(bad);
  }
  const PhysAddr block = a.value();
  const uint64_t seq = seq_++;
  const uint64_t words = pages_of_order(order) * kPageSize / sizeof(uint64_t);
  auto* w = phys_to_virt<volatile uint64_t>(block);
  for (uint64_t i = 0; i < words; ++i) w[i] = pattern(worker_, seq, block, i);
  slots_[(head_ + count_) % kSlots] = {block, seq, order};
  ++count_;
  ++counters_.allocated;
  return true;
}

bool BackgroundChurn::release_all(ChurnMismatch& bad) {
  while (count_ > 0) {
    if (!check_and_free_oldest(bad)) return false;
  }
  return true;
}

}  // namespace blimp::mm
