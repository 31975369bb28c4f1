// A self-test of the page allocator on real RAM, for the guest (a boot option or a test app):
// allocates up to `max_bytes` of free memory in blocks of every order, writes a pattern derived
// from each page's address into every word, verifies it, frees everything and checks that the
// allocator's metadata is consistent and everything coalesced back. Touching the memory makes the
// host back it: run it in test VMs, not in production ones.
#pragma once

#include <cstdint>

#include "mm/page_allocator.h"

namespace blimp::mm {

struct SelfTestResult {
  bool ok;
  uint64_t bytes_tested;
  uint64_t blocks;
  uint64_t bad_words;  // pattern mismatches (overlapping blocks or broken RAM)
};

SelfTestResult self_test(PageAllocator& pa, uint64_t max_bytes);

}  // namespace blimp::mm
