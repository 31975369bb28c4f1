// A fixed-size text buffer for building one log line or a short label without printf (the guest's
// printf lives in the console; this keeps drivers free of libc formatting).
#pragma once

#include <cstddef>
#include <cstdint>

namespace blimp::drivers {

class StrBuf {
 public:
  StrBuf(char* buf, size_t cap) : buf_(buf), cap_(cap) {
    if (cap_) buf_[0] = 0;
  }
  StrBuf& str(const char* s) {
    while (s && *s) put(*s++);
    return *this;
  }
  StrBuf& hex(uint64_t v, unsigned min_digits = 1, bool prefix = true) {
    if (prefix) str("0x");
    char tmp[16];
    unsigned n = 0;
    do {
      tmp[n++] = "0123456789abcdef"[v & 15];
      v >>= 4;
    } while (v && n < 16);
    while (n < min_digits && n < 16) tmp[n++] = '0';
    while (n) put(tmp[--n]);
    return *this;
  }
  StrBuf& dec(uint64_t v) {
    char tmp[20];
    unsigned n = 0;
    do {
      tmp[n++] = char('0' + v % 10);
      v /= 10;
    } while (v);
    while (n) put(tmp[--n]);
    return *this;
  }
  const char* c_str() const { return buf_; }
  size_t size() const { return len_; }

 private:
  void put(char c) {
    if (len_ + 1 < cap_) {
      buf_[len_++] = c;
      buf_[len_] = 0;
    }
  }
  char* buf_;
  size_t cap_;
  size_t len_ = 0;
};

}  // namespace blimp::drivers
