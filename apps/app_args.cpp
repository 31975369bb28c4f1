#include "apps/app_args.h"

#include "lib/parse.h"

#include <cstdio>
#include <cstring>

namespace blimp::app_args {

const char* find(int argc, char** argv, const char* key) {
  size_t n = strlen(key);
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], key, n) == 0 && argv[i][n] == '=') return argv[i] + n + 1;
  }
  return nullptr;
}

bool parse_size(const char* text, uint64_t& out) { return blimp::parse_size(text, out); }

bool parse_duration(const char* text, uint64_t& out_ns) {
  const char* p = text;
  uint64_t v;
  if (!blimp::parse_leading_u64(p, v)) return false;
  uint64_t unit = 1000000000ull;
  if (strcmp(p, "ms") == 0)
    unit = 1000000ull;
  else if (strcmp(p, "us") == 0)
    unit = 1000ull;
  else if (strcmp(p, "s") == 0 || *p == '\0')
    unit = 1000000000ull;
  else if (strcmp(p, "m") == 0)
    unit = 60000000000ull;
  else
    return false;
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
  if (blimp::parse_u64(v, out)) return true;
  printf("%s: bad number for %s: '%s'\n", app, key, v);
  return false;
}

}  // namespace blimp::app_args
