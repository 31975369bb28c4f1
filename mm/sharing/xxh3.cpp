#include "mm/sharing/xxh3.h"

#include <string.h>

// Scalar path only; inline everything (no libxxhash at link time).
#define XXH_INLINE_ALL
#define XXH_VECTOR 0  // XXH_SCALAR
// -ffreestanding turns off the memcpy builtin: XXH_readLE64 would call memcpy per 8 bytes.
#define memcpy __builtin_memcpy
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include <xxhash.h>
#pragma GCC diagnostic pop
#undef memcpy

namespace blimp::mm::sharing {

uint64_t xxh3_64(const void* data, size_t len) { return XXH3_64bits(data, len); }

uint64_t zero_page_hash() {
  static uint64_t cached = 0;
  static bool have = false;
  if (!have) {
    alignas(64) static const unsigned char zeros[kHashPageSize] = {};
    cached = XXH3_64bits(zeros, sizeof zeros);
    have = true;
  }
  return cached;
}

bool page_is_zero(const void* page) {
  const uint64_t* w = static_cast<const uint64_t*>(page);
  uint64_t acc = 0;
  for (size_t i = 0; i < kHashPageSize / 8; i++) acc |= w[i];
  return acc == 0;
}

}  // namespace blimp::mm::sharing
