// The kernel command line (from PVH start_info or multiboot2), split into space-separated words.
// key=value words are looked up by key; QEMU appends its own (virtio_mmio.device=...) after ours.
#pragma once

#include <cstddef>

namespace blimp::cmdline {

void init(const char* text);
const char* raw();

// Copies the value of the first `key=value` word into buf (NUL-terminated). False if absent or
// too long for buf.
bool get(const char* key, char* buf, size_t buf_size);
// Parses an unsigned integer value (decimal, 0x hex, optional K/M/G suffix).
bool get_u64(const char* key, unsigned long long& out);
bool has_flag(const char* word);

// Calls fn(value, ctx) for every `key=value` word with this key, in order.
void for_each(const char* key, void (*fn)(const char* value, size_t len, void* ctx), void* ctx);

}  // namespace blimp::cmdline
