// Within-VM twin detection for sharing=vm (docs/sharing.md): remembers every hash the guest has
// seen in sealed pages and says when a page's content occurs for the second time (then both the
// earlier page and this one are worth hinting) or later (this one). Open addressing over a caller-
// supplied array (power-of-two size), filled at most to 3/4. Counts only grow: unsealing does not
// forget a hash (a stale count costs the host a scan, never correctness). Host-compilable.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blimp::mm::sharing {

class TwinTable {
 public:
  struct Slot {
    uint64_t hash;
    uint64_t first_pfn;
    uint32_t count;
    uint32_t used;
  };
  static_assert(sizeof(Slot) == 24);

  enum class Seen {
    First,   // not seen before: nothing to hint yet
    Second,  // seen once before at `first_pfn`: hint both
    More,    // seen twice or more: hint this page
    Full,    // table full: not recorded (the caller decides; sharing=vm does not hint it)
  };

  // `capacity` must be a power of two (rounded down otherwise). Clears the slots.
  void init(Slot* slots, size_t capacity);
  bool ready() const { return slots_ != nullptr; }
  // Forgets every hash (e.g. before hinting everything again after a device reset).
  void clear() { init(slots_, capacity_); }
  Seen add(uint64_t hash, uint64_t pfn, uint64_t& first_pfn);
  uint32_t count(uint64_t hash) const;
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }

 private:
  size_t slot_of(uint64_t hash) const;

  Slot* slots_ = nullptr;
  size_t capacity_ = 0;
  size_t size_ = 0;
};

}  // namespace blimp::mm::sharing
