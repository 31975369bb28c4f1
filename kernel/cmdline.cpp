#include "kernel/cmdline.h"

#include <cstring>

namespace blimp::cmdline {
namespace {

const char* g_text = "";

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

// Iterates over words; calls fn(word, len) until it returns true.
template <typename Fn>
void words(Fn fn) {
  const char* p = g_text;
  while (*p) {
    while (is_space(*p)) p++;
    const char* start = p;
    while (*p && !is_space(*p)) p++;
    if (p > start && fn(start, static_cast<size_t>(p - start))) return;
  }
}

bool key_matches(const char* word, size_t len, const char* key, const char*& value,
                 size_t& value_len) {
  size_t klen = strlen(key);
  if (len <= klen || word[klen] != '=' || strncmp(word, key, klen) != 0) return false;
  value = word + klen + 1;
  value_len = len - klen - 1;
  return true;
}

}  // namespace

void init(const char* text) { g_text = text ? text : ""; }
const char* raw() { return g_text; }

bool get(const char* key, char* buf, size_t buf_size) {
  bool found = false;
  words([&](const char* w, size_t len) {
    const char* v;
    size_t vlen;
    if (!key_matches(w, len, key, v, vlen)) return false;
    if (vlen + 1 <= buf_size) {
      memcpy(buf, v, vlen);
      buf[vlen] = '\0';
      found = true;
    }
    return true;
  });
  return found;
}

bool get_u64(const char* key, unsigned long long& out) {
  char buf[32];
  if (!get(key, buf, sizeof buf)) return false;
  const char* p = buf;
  unsigned base = 10;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
    base = 16;
    p += 2;
  }
  unsigned long long v = 0;
  bool any = false;
  for (; *p; p++) {
    unsigned d;
    if (*p >= '0' && *p <= '9') d = *p - '0';
    else if (base == 16 && *p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
    else if (base == 16 && *p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
    else break;
    v = v * base + d;
    any = true;
  }
  if (!any) return false;
  switch (*p) {
    case 'K': case 'k': v <<= 10; p++; break;
    case 'M': case 'm': v <<= 20; p++; break;
    case 'G': case 'g': v <<= 30; p++; break;
    default: break;
  }
  if (*p) return false;
  out = v;
  return true;
}

bool has_flag(const char* flag) {
  bool found = false;
  size_t flen = strlen(flag);
  words([&](const char* w, size_t len) {
    found = len == flen && strncmp(w, flag, len) == 0;
    return found;
  });
  return found;
}

void for_each(const char* key, void (*fn)(const char* value, size_t len, void* ctx), void* ctx) {
  words([&](const char* w, size_t len) {
    const char* v;
    size_t vlen;
    if (key_matches(w, len, key, v, vlen)) fn(v, vlen, ctx);
    return false;
  });
}

}  // namespace blimp::cmdline
