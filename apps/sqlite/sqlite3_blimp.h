// SQLite on Blimp: the amalgamation's header (generated into the build tree by
// apps/sqlite/build-sqlite.sh from Debian's sqlite3 source) and what apps/sqlite adds to it.
#pragma once

#include <cstdint>

#include "sqlite3.h"

namespace blimp::sqlite {

// Bytes of file data held by the in-memory VFS (apps/sqlite/memvfs.cpp).
uint64_t memvfs_bytes();

}  // namespace blimp::sqlite
