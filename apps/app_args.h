// Helpers for apps: key=value lookup in argv, sizes with K/M/G suffixes, durations with
// ms/s suffixes. A malformed value is an error the app reports, never silently a default.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blimp::app_args {

// The value of `key=` in argv, or nullptr.
const char* find(int argc, char** argv, const char* key);

// Parses "123", "0x1f", "64K", "512M", "2G" (bytes). False on garbage.
bool parse_size(const char* text, uint64_t& out);
// Parses "250ms", "2s", "1m", "5" (seconds). Nanoseconds out.
bool parse_duration(const char* text, uint64_t& out_ns);

// Convenience: looks up key and parses it; prints "APP: bad value for KEY: VALUE" on garbage
// and returns false; absent keys leave `out` untouched and return true.
bool get_size(const char* app, int argc, char** argv, const char* key, uint64_t& out);
bool get_duration(const char* app, int argc, char** argv, const char* key, uint64_t& out_ns);
bool get_u64(const char* app, int argc, char** argv, const char* key, uint64_t& out);

}  // namespace blimp::app_args
