// Files hangar writes as root: directories only we can change, no symlink followed.
//
// hangar runs as root, so a path it writes through must not be one another user can redirect: a
// run directory owned by someone else, or group/world-writable, or reached through a directory
// another user can rename entries in, would let that user plant a symlink and have root truncate
// whatever it points to. The run directory and /run/blimp are checked with check_private_dir(),
// and every file in them is created with O_NOFOLLOW (or written to a temporary file and renamed).
#pragma once

#include <sys/types.h>
#include <cstdio>
#include <string>

#include "error_or.h"

namespace hangar {

// Whether `path` is a directory private to this process's effective user (the error says why not): it
// must exist, not be a symlink, be owned by the effective uid, and not be group/world-writable;
// each directory above it must be owned by root or us, and if group/world-writable, sticky
// (like /tmp). Symlinks above it are resolved (/var/run -> /run is fine).
ErrorOr<void> check_private_dir(const std::string& path);

// Creates `path` (mode 0700; missing parents 0755) unless it exists, then check_private_dir().
// `mode` is the mode a newly created final directory gets. The error says why it is unsafe.
ErrorOr<void> make_private_dir(const std::string& path, mode_t mode = 0700);

// open(2) with O_NOFOLLOW | O_CLOEXEC added: a symlink at `path` fails with ELOOP.
int open_nofollow(const std::string& path, int flags, mode_t mode = 0600);
// fopen for writing ("w"/"a") through open_nofollow; nullptr with errno set on failure.
FILE* fopen_nofollow(const std::string& path, const char* mode, mode_t perm = 0644);

// Writes `content` to `path` atomically: a fresh temporary file beside it (O_EXCL | O_NOFOLLOW,
// mode `perm`), then rename(2), which replaces a symlink at `path` rather than following it.
ErrorOr<void> write_file_atomic(const std::string& path, const std::string& content, mode_t perm);

}  // namespace hangar
