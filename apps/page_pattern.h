// Page contents that know which fill wrote them: the detectors of integrity and memhog.
//
// Every 8-byte word of a 4 KiB page holds
//
//     word[i] = (key + i * kGoldenGamma) ^ generation
//
// where `key` = mix64(salt ^ mix64(where)) names the page's place (`where`: a page number or an
// address chosen by the app, `salt`: one per app) and `generation` is the 64-bit number of the
// fill that wrote it (a per-fill or per-allocation counter, never reused). So:
//   - stale content, an earlier fill of the same page, differs in every word by old ^ new and
//     decodes (word ^ mask) to that earlier generation, the same one in every word;
//   - another page's content, of any generation, decodes to garbage that differs word by word;
//   - zeros where data was decode to garbage too, and are recognised as zeros;
// none of them can be mistaken for the expected page. One add and one xor per word: cheap
// enough to fill and verify whole pages under TCG.
#pragma once

#include <cstdint>

#include "apps/mix.h"

namespace blimp::apps::pattern {

constexpr unsigned kWordsPerPage = 4096 / 8;

// The key of the page at `where` for the app with `salt`.
constexpr uint64_t page_key(uint64_t salt, uint64_t where) { return mix64(salt ^ mix64(where)); }

constexpr uint64_t mask(uint64_t key, unsigned word) { return key + word * kGoldenGamma; }

constexpr uint64_t encode(uint64_t key, unsigned word, uint64_t generation) {
  return mask(key, word) ^ generation;
}

// The generation that would have written `value` at this word of this page. Meaningful only if
// the value came from this page (check_page decides that).
constexpr uint64_t decode(uint64_t key, unsigned word, uint64_t value) {
  return value ^ mask(key, word);
}

// Writes words [0, words) of the page (words = kWordsPerPage for the whole page).
inline void fill_page(volatile uint64_t* page, uint64_t key, uint64_t generation,
                      unsigned words = kWordsPerPage) {
  uint64_t m = key;
  for (unsigned i = 0; i < words; i++, m += kGoldenGamma) page[i] = m ^ generation;
}

enum class Verdict : uint8_t {
  kOk,       // every word as written by `expected`
  kStale,    // every wrong word decodes to one generation of this page, earlier than `limit`
  kZeroed,   // every wrong word is zero
  kForeign,  // anything else: another page's or another app's data, or torn content
};

inline const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::kOk: return "ok";
    case Verdict::kStale: return "stale";
    case Verdict::kZeroed: return "zeroed";
    case Verdict::kForeign: return "foreign";
  }
  return "?";
}

struct PageCheck {
  Verdict verdict = Verdict::kOk;
  unsigned bad_words = 0;
  unsigned first_bad = 0;         // valid when bad_words > 0
  uint64_t first_found = 0;       // the value read at first_bad
  uint64_t found_generation = 0;  // valid for kStale
};

// Checks words [0, words) of the page against generation `expected`. Generations start at 1;
// `limit` is the next one the app would hand out: a decoded generation of 0 or at or beyond
// `limit` was never written, so such content is not stale but foreign.
inline PageCheck check_page(const volatile uint64_t* page, uint64_t key, uint64_t expected,
                            uint64_t limit, unsigned words = kWordsPerPage) {
  PageCheck r;
  bool all_zero = true, one_generation = true;
  uint64_t m = key;
  for (unsigned i = 0; i < words; i++, m += kGoldenGamma) {
    uint64_t got = page[i];
    if (got == (m ^ expected)) continue;
    uint64_t gen = got ^ m;
    if (r.bad_words++ == 0) {
      r.first_bad = i;
      r.first_found = got;
      r.found_generation = gen;
    } else if (gen != r.found_generation) {
      one_generation = false;
    }
    if (got != 0) all_zero = false;
  }
  if (r.bad_words == 0) return r;
  if (all_zero)
    r.verdict = Verdict::kZeroed;
  else if (one_generation && r.found_generation != 0 && r.found_generation < limit)
    r.verdict = Verdict::kStale;
  else
    r.verdict = Verdict::kForeign;
  return r;
}

}  // namespace blimp::apps::pattern
