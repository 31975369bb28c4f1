#include "lib/parse.h"

namespace blimp {
bool parse_leading_u64(const char*& p, uint64_t& v) {
  unsigned base = 10;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
    base = 16;
    p += 2;
  }
  bool any = false;
  v = 0;
  for (;; p++) {
    unsigned d;
    if (*p >= '0' && *p <= '9')
      d = *p - '0';
    else if (base == 16 && *p >= 'a' && *p <= 'f')
      d = *p - 'a' + 10;
    else if (base == 16 && *p >= 'A' && *p <= 'F')
      d = *p - 'A' + 10;
    else
      break;
    if (v > (UINT64_MAX - d) / base) return false;
    v = v * base + d;
    any = true;
  }
  return any;
}

bool parse_u64(const char* text, uint64_t& out) {
  const char* p = text;
  uint64_t v;
  if (!parse_leading_u64(p, v) || *p) return false;
  out = v;
  return true;
}

bool parse_size(const char* text, uint64_t& out) {
  const char* p = text;
  uint64_t v;
  if (!parse_leading_u64(p, v)) return false;
  unsigned shift = 0;
  switch (*p) {
    case 'K':
    case 'k':
      shift = 10;
      p++;
      break;
    case 'M':
    case 'm':
      shift = 20;
      p++;
      break;
    case 'G':
    case 'g':
      shift = 30;
      p++;
      break;
    default: break;
  }
  if (*p == 'i' && shift) p++;  // KiB/MiB/GiB spellings
  if (*p == 'B' && shift) p++;
  if (*p || (shift && v > (UINT64_MAX >> shift))) return false;
  out = v << shift;
  return true;
}

}  // namespace blimp
