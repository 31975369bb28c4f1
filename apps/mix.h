// The apps' deterministic page contents and request streams. One 64-bit mixer for all of them:
// the finalizer of splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
// generators", OOPSLA 2014; constants as in Vigna's public-domain splitmix64.c). Cheap, and
// every output bit depends on every input bit, so a page filled from (seed, index) differs from
// every other page and a single flipped bit is caught when it is checked.
#pragma once

#include <cstdint>

namespace blimp::apps {

// 2^64 / golden ratio: splitmix64's stream increment.
constexpr uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ull;

constexpr uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The next value of a splitmix64 stream.
inline uint64_t splitmix64(uint64_t& state) { return mix64(state += kGoldenGamma); }

}  // namespace blimp::apps
