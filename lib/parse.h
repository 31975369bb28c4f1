// Number parsing shared by the kernel command line and the apps' arguments.
#pragma once

#include <cstdint>

namespace blimp {

// "123", "0x1f", "64K", "512M", "2G" (also "KiB"/"MiB"/"GiB" spellings) in bytes. False on
// garbage, trailing characters or overflow.
bool parse_size(const char* text, uint64_t& out);
// Reads a decimal or 0x-hex number at `p` and advances `p` past it, so the caller can read a
// unit after it. False if there are no digits or the number overflows.
bool parse_leading_u64(const char*& p, uint64_t& out);
// A plain unsigned number, decimal or 0x hex, with nothing after it.
bool parse_u64(const char* text, uint64_t& out);

}  // namespace blimp
