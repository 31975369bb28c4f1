// SQLite on Blimp: the amalgamation's header (generated into the build tree by
// apps/sqlite/build-sqlite.sh from Debian's sqlite3 source) and what apps/sqlite adds to it.
#pragma once

#include <cstdint>

#include "sqlite3.h"

namespace blimp::sqlite {

// SQLITE_CONFIG_PCACHE2 on the page allocator, registered as a shrinker (apps/sqlite/pcache.cpp).
// Call before sqlite3_initialize(); returns sqlite3_config's result.
int install_pcache();

struct PcacheStats {
  uint64_t held_pages;      // allocator pages (4 KiB) holding cached database pages now
  uint64_t unpinned_pages;  // of which the shrinker could drop now
  uint64_t shrunk_pages;    // dropped by the shrinker so far
  uint64_t scans;           // shrinker calls
  uint64_t fetches, hits, misses, alloc_failures;
};
PcacheStats pcache_stats();

// Bytes of file data held by the in-memory VFS (apps/sqlite/memvfs.cpp).
uint64_t memvfs_bytes();

}  // namespace blimp::sqlite
