#include "mm/sharing/twin_table.h"

namespace blimp::mm::sharing {

void TwinTable::init(Slot* slots, size_t capacity) {
  size_t c = 1;
  while (c * 2 <= capacity) c *= 2;
  if (capacity == 0) c = 0;
  slots_ = slots;
  capacity_ = c;
  size_ = 0;
  for (size_t i = 0; i < c; i++) slots_[i] = Slot{0, 0, 0, 0};
}

size_t TwinTable::slot_of(uint64_t hash) const {
  // XXH3 output is well mixed already; linear probing from its low bits.
  size_t mask = capacity_ - 1;
  size_t i = static_cast<size_t>(hash) & mask;
  while (slots_[i].used && slots_[i].hash != hash) i = (i + 1) & mask;
  return i;
}

TwinTable::Seen TwinTable::add(uint64_t hash, uint64_t pfn, uint64_t& first_pfn) {
  if (capacity_ == 0) return Seen::Full;
  size_t i = slot_of(hash);
  Slot& s = slots_[i];
  if (!s.used) {
    if ((size_ + 1) * 4 > capacity_ * 3) return Seen::Full;
    s = Slot{hash, pfn, 1, 1};
    size_++;
    return Seen::First;
  }
  first_pfn = s.first_pfn;
  if (s.count != 0xffffffffu) s.count++;
  return s.count == 2 ? Seen::Second : Seen::More;
}

uint32_t TwinTable::count(uint64_t hash) const {
  if (capacity_ == 0) return 0;
  const Slot& s = slots_[slot_of(hash)];
  return s.used ? s.count : 0;
}

}  // namespace blimp::mm::sharing
