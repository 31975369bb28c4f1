// XXH3-64 (seed 0) of pages: the hash the Blimp sharing hints carry (spec section 5.4).
//
// xxHash is compiled header-only into xxh3.cpp with the scalar code path (kernel code must not
// assume AVX, and SSE is best kept out of hot kernel paths) and memcpy as a compiler builtin
// (with -ffreestanding every 8-byte load would otherwise be a call to memcpy).
#pragma once

#include <cstddef>
#include <cstdint>

namespace blimp::mm::sharing {

constexpr size_t kHashPageSize = 4096;

uint64_t xxh3_64(const void* data, size_t len);
// XXH3-64 of one 4 KiB page.
inline uint64_t page_hash(const void* page) { return xxh3_64(page, kHashPageSize); }
// XXH3-64 of 4096 zero bytes (computed once).
uint64_t zero_page_hash();
// True if all 4096 bytes are zero.
bool page_is_zero(const void* page);

}  // namespace blimp::mm::sharing
