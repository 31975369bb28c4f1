#include "lib/format.h"

#include <cstdint>

namespace blimp {
namespace {

class Sink {
 public:
  Sink(char* buf, size_t size) : buf_(buf), size_(size) {}
  void put(char c) {
    if (size_ && len_ + 1 < size_) buf_[len_] = c;
    len_++;
  }
  void repeat(char c, int n) {
    for (int i = 0; i < n; i++) put(c);
  }
  void finish() {
    if (size_) buf_[len_ < size_ ? len_ : size_ - 1] = '\0';
  }
  size_t length() const { return len_; }

 private:
  char* buf_;
  size_t size_;
  size_t len_ = 0;
};

struct Spec {
  bool left = false, zero = false, plus = false, space = false, alt = false;
  int width = 0;
  int precision = -1;
};

void emit_number(Sink& out, uint64_t v, bool negative, unsigned base, bool upper, const Spec& s,
                 const char* prefix) {
  char digits[24];
  int n = 0;
  const char* set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  if (v == 0 && s.precision != 0) digits[n++] = '0';
  while (v) {
    digits[n++] = set[v % base];
    v /= base;
  }
  char sign = negative ? '-' : s.plus ? '+' : s.space ? ' ' : 0;
  int prefix_len = 0;
  while (prefix && prefix[prefix_len]) prefix_len++;
  int zeros = s.precision > n ? s.precision - n : 0;
  int body = n + zeros + (sign ? 1 : 0) + prefix_len;
  int pad = s.width > body ? s.width - body : 0;
  if (s.zero && !s.left && s.precision < 0) {
    zeros += pad;
    pad = 0;
  }
  if (!s.left) out.repeat(' ', pad);
  if (sign) out.put(sign);
  for (int i = 0; i < prefix_len; i++) out.put(prefix[i]);
  out.repeat('0', zeros);
  while (n) out.put(digits[--n]);
  if (s.left) out.repeat(' ', pad);
}

}  // namespace

size_t vformat(char* buf, size_t size, const char* fmt, va_list ap) {
  Sink out(buf, size);
  for (const char* p = fmt; *p; p++) {
    if (*p != '%') {
      out.put(*p);
      continue;
    }
    Spec s;
    for (;; p++) {
      char f = p[1];
      if (f == '-')
        s.left = true;
      else if (f == '0')
        s.zero = true;
      else if (f == '+')
        s.plus = true;
      else if (f == ' ')
        s.space = true;
      else if (f == '#')
        s.alt = true;
      else
        break;
    }
    p++;
    if (*p == '*') {
      s.width = va_arg(ap, int);
      if (s.width < 0) {
        s.left = true;
        s.width = -s.width;
      }
      p++;
    } else {
      while (*p >= '0' && *p <= '9') s.width = s.width * 10 + (*p++ - '0');
    }
    if (*p == '.') {
      p++;
      s.precision = 0;
      if (*p == '*') {
        s.precision = va_arg(ap, int);
        p++;
      } else {
        while (*p >= '0' && *p <= '9') s.precision = s.precision * 10 + (*p++ - '0');
      }
    }
    int length = 0;  // 0 int, 1 long, 2 long long, -1 short, -2 char
    for (;; p++) {
      if (*p == 'l')
        length++;
      else if (*p == 'h')
        length--;
      else if (*p == 'z' || *p == 'j' || *p == 't')
        length = 2;
      else
        break;
    }
    if (*p == '\0') break;
    auto get_signed = [&]() -> int64_t {
      if (length >= 1) return length == 1 ? va_arg(ap, long) : va_arg(ap, long long);
      int v = va_arg(ap, int);
      if (length == -1) return static_cast<short>(v);
      if (length <= -2) return static_cast<signed char>(v);
      return v;
    };
    auto get_unsigned = [&]() -> uint64_t {
      if (length >= 1)
        return length == 1 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned long long);
      unsigned v = va_arg(ap, unsigned);
      if (length == -1) return static_cast<unsigned short>(v);
      if (length <= -2) return static_cast<unsigned char>(v);
      return v;
    };
    switch (*p) {
      case 'd':
      case 'i': {
        int64_t v = get_signed();
        uint64_t mag = v < 0 ? uint64_t(0) - uint64_t(v) : uint64_t(v);
        emit_number(out, mag, v < 0, 10, false, s, nullptr);
        break;
      }
      case 'u': emit_number(out, get_unsigned(), false, 10, false, s, nullptr); break;
      case 'o': {
        uint64_t v = get_unsigned();
        emit_number(out, v, false, 8, false, s, s.alt && v ? "0" : nullptr);
        break;
      }
      case 'x':
      case 'X': {
        uint64_t v = get_unsigned();
        bool upper = *p == 'X';
        emit_number(out, v, false, 16, upper, s, s.alt && v ? (upper ? "0X" : "0x") : nullptr);
        break;
      }
      case 'p': {
        uint64_t v = reinterpret_cast<uintptr_t>(va_arg(ap, void*));
        emit_number(out, v, false, 16, false, s, "0x");
        break;
      }
      case 'c': {
        char c = static_cast<char>(va_arg(ap, int));
        if (!s.left) out.repeat(' ', s.width - 1);
        out.put(c);
        if (s.left) out.repeat(' ', s.width - 1);
        break;
      }
      case 's': {
        const char* str = va_arg(ap, const char*);
        if (!str) str = "(null)";
        int n = 0;
        while (str[n] && (s.precision < 0 || n < s.precision)) n++;
        if (!s.left) out.repeat(' ', s.width - n);
        for (int i = 0; i < n; i++) out.put(str[i]);
        if (s.left) out.repeat(' ', s.width - n);
        break;
      }
      case '%': out.put('%'); break;
      default:  // unknown conversion: print it verbatim so the mistake is visible
        out.put('%');
        out.put(*p);
        break;
    }
  }
  out.finish();
  return out.length();
}

size_t format(char* buf, size_t size, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t n = vformat(buf, size, fmt, ap);
  va_end(ap);
  return n;
}

}  // namespace blimp
