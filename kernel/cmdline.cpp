#include "kernel/cmdline.h"

#include <cstring>

#include "lib/parse.h"

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
  uint64_t v;
  if (!get(key, buf, sizeof buf) || !parse_size(buf, v)) return false;
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
