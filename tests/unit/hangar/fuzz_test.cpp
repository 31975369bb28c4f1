// Replays the fuzz seeds and a bounded number of deterministic mutations of them through the
// fuzz entry points, so every build checks them under ASan/UBSan even without clang.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

namespace hangar_fuzz {
int config_one(const uint8_t* data, size_t size);
int qmp_one(const uint8_t* data, size_t size);
}  // namespace hangar_fuzz

namespace {

std::vector<std::string> seeds(const std::string& kind) {
  std::vector<std::string> out;
  for (const auto& e :
       std::filesystem::directory_iterator(std::string(HANGAR_FUZZ_SEEDS) + "/" + kind)) {
    std::ifstream in(e.path(), std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    out.push_back(ss.str());
  }
  return out;
}

void mutate_and_run(const std::string& kind, int (*fn)(const uint8_t*, size_t), int rounds) {
  auto corpus = seeds(kind);
  ASSERT_FALSE(corpus.empty());
  std::mt19937_64 rng(12345);
  const std::string dict[] = {
      "{",      "}",          "[",         "]",         "\"", ",",      ":",
      "\n",     "\r\n",       "\\",        "null",      "-1", "1e999",  "18446744073709551616",
      "\"id\"", "\"return\"", "\"event\"", "\"error\"", "=",  "\"vms\""};
  for (int r = 0; r < rounds; ++r) {
    std::string s = corpus[rng() % corpus.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      switch (rng() % 4) {
        case 0:
          if (!s.empty() && pos < s.size()) s.erase(pos, 1 + rng() % 8);
          break;
        case 1: s.insert(pos, dict[rng() % std::size(dict)]); break;
        case 2:
          if (pos < s.size()) s[pos] = static_cast<char>(rng());
          break;
        case 3: s.insert(pos, s.substr(0, rng() % 64)); break;
      }
    }
    fn(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }
  for (const auto& s : corpus) fn(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

TEST(FuzzReplay, Config) { mutate_and_run("config", hangar_fuzz::config_one, 3000); }
TEST(FuzzReplay, Qmp) { mutate_and_run("qmp", hangar_fuzz::qmp_one, 1500); }
