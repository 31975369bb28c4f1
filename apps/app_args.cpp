#include "apps/app_args.h"

#include <cstdio>
#include <cstring>

namespace blimp::app_args {
namespace {

bool parse_number(const char*& p, uint64_t& v) {
  unsigned base = 10;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
    base = 16;
    p += 2;
  }
  bool any = false;
  v = 0;
  for (;; p++) {
    unsigned d;
    if (*p >= '0' && *p <= '9') d = *p - '0';
    else if (base == 16 && *p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
    else if (base == 16 && *p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
    else break;
    if (v > (UINT64_MAX - d) / base) return false;
    v = v * base + d;
    any = true;
  }
  return any;
}

}  // namespace

const char* find(int argc, char** argv, const char* key) {
  size_t n = strlen(key);
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], key, n) == 0 && argv[i][n] == '=') return argv[i] + n + 1;
  }
  return nullptr;
}

bool parse_size(const char* text, uint64_t& out) {
  const char* p = text;
  uint64_t v;
  if (!parse_number(p, v)) return false;
  unsigned shift = 0;
  switch (*p) {
    case 'K': case 'k': shift = 10; p++; break;
    case 'M': case 'm': shift = 20; p++; break;
    case 'G': case 'g': shift = 30; p++; break;
    default: break;
  }
  if (*p == 'i' && shift) p++;  // KiB/MiB/GiB spellings
  if (*p == 'B' && shift) p++;
  if (*p || (shift && v > (UINT64_MAX >> shift))) return false;
  out = v << shift;
  return true;
}

bool parse_duration(const char* text, uint64_t& out_ns) {
  const char* p = text;
  uint64_t v;
  if (!parse_number(p, v)) return false;
  uint64_t unit = 1000000000ull;
  if (strcmp(p, "ms") == 0) unit = 1000000ull;
  else if (strcmp(p, "us") == 0) unit = 1000ull;
  else if (strcmp(p, "s") == 0 || *p == '\0') unit = 1000000000ull;
  else if (strcmp(p, "m") == 0) unit = 60000000000ull;
  else return false;
  if (v > UINT64_MAX / unit) return false;
  out_ns = v * unit;
  return true;
}

bool get_size(const char* app, int argc, char** argv, const char* key, uint64_t& out) {
  const char* v = find(argc, argv, key);
  if (!v) return true;
  if (parse_size(v, out)) return true;
  printf("%s: bad size for %s: '%s' (use e.g. 64M or 1G)\n", app, key, v);
  return false;
}

bool get_duration(const char* app, int argc, char** argv, const char* key, uint64_t& out_ns) {
  const char* v = find(argc, argv, key);
  if (!v) return true;
  if (parse_duration(v, out_ns)) return true;
  printf("%s: bad duration for %s: '%s' (use e.g. 500ms or 10s)\n", app, key, v);
  return false;
}

bool get_u64(const char* app, int argc, char** argv, const char* key, uint64_t& out) {
  const char* v = find(argc, argv, key);
  if (!v) return true;
  const char* p = v;
  uint64_t x;
  if (parse_number(p, x) && *p == '\0') {
    out = x;
    return true;
  }
  printf("%s: bad number for %s: '%s'\n", app, key, v);
  return false;
}

}  // namespace blimp::app_args
