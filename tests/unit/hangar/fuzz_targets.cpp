// Fuzz entry points: the config parser and QMP framing/parsing/client. Built two ways: as
// libFuzzer binaries with clang (HANGAR_LIBFUZZER), and into the GoogleTest binary, where
// fuzz_test.cpp replays seeds and deterministic random inputs under ASan/UBSan with gcc.
#include <sys/socket.h>
#include <unistd.h>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "config.h"
#include "qmp.h"

namespace hangar_fuzz {

int config_one(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // Errors are values; anything thrown is a finding.
  if (auto c = hangar::parse_config_json(text, "fuzz"); !c.is_error())
    (void)hangar::validate(c.value());
  // The flag grammar is hand-written, so it gets the same input.
  (void)hangar::parse_vm_flag(text);
  (void)hangar::parse_size(text);
  (void)hangar::parse_duration(text);
  return 0;
}

// The nesting depth of a parsed value, recursively (only called on values the scan bounded).
size_t real_depth(const nlohmann::json& j) {
  if (!j.is_structured()) return 0;
  size_t d = 0;
  for (const auto& e : j) d = std::max(d, real_depth(e));
  return d + 1;
}

int qmp_one(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // The depth pre-scan never lets a deeper document through to the DOM, and agrees with the
  // parser on every document the parser accepts (below the limit). nlohmann stops at a NUL
  // byte as at the end of input, so it parses only what precedes one; the scan reads it all
  // and can only count deeper.
  {
    const size_t scanned = hangar::json_nesting_depth(bytes, hangar::kQmpMaxDepth);
    if (scanned <= hangar::kQmpMaxDepth) {
      auto j = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
      if (!j.is_discarded()) {
        const std::string_view parsed = bytes.substr(0, bytes.find('\0'));
        if (real_depth(j) > scanned) __builtin_trap();
        if (real_depth(j) != hangar::json_nesting_depth(parsed, hangar::kQmpMaxDepth))
          __builtin_trap();
      }
    }
  }
  // Framing and classification on their own, fed in uneven pieces.
  hangar::QmpFramer f;
  for (size_t i = 0; i < bytes.size(); i += 1 + (i % 7)) {
    f.feed(bytes.substr(i, 1 + (i % 7)));
    while (auto line = f.next()) {
      (void)hangar::parse_qmp_message(*line);
    }
  }
  // The whole client: a greeting, then the input as QEMU's stream.
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) return 0;
  {
    hangar::QmpClient c({}, std::chrono::seconds(1));
    c.attach(sv[0]);
    c.execute("query-balloon", [](const hangar::QmpReply&) {});
    std::string stream = "{\"QMP\": {}}\r\n{\"return\": {}, \"id\": 1}\r\n";
    stream.append(bytes.data(), bytes.size());
    size_t off = 0;
    while (off < stream.size() && c.state() != hangar::QmpClient::State::Closed) {
      size_t n = std::min<size_t>(4096, stream.size() - off);
      if (write(sv[1], stream.data() + off, n) != static_cast<ssize_t>(n)) break;
      off += n;
      c.handle_readable();
      char sink[4096];
      while (read(sv[1], sink, sizeof sink) == static_cast<ssize_t>(sizeof sink)) {
      }
    }
    c.check_timeouts(hangar::Clock::now() + std::chrono::seconds(5));
  }
  close(sv[1]);
  return 0;
}

}  // namespace hangar_fuzz

#ifdef HANGAR_LIBFUZZER_CONFIG
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return hangar_fuzz::config_one(data, size);
}
#endif
#ifdef HANGAR_LIBFUZZER_QMP
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return hangar_fuzz::qmp_one(data, size);
}
#endif
