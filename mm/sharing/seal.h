// Sealing app data for sharing (docs/sharing.md).
//
// seal(ptr, bytes) declares the whole pages inside [ptr, ptr + bytes) read-only by contract:
// the app will not write them until it unseals them. They are hashed (XXH3-64) and hinted to the
// host (unless sharing=off, or sharing=vm and the content is unique in this VM), which may then
// merge them with identical pages of this or other VMs. Zero pages are hinted as ZERO runs.
// unseal(ptr, bytes) tells the host (UNSEAL) that the sealed pages overlapping [ptr, ptr + bytes)
// are about to change, and returns once the device has acknowledged it: only then may the app
// write them (or free them).
//
// The contract is not enforced by the MMU: the guest identity-maps RAM with 2 MiB pages, and
// write-protecting a 4 KiB page would mean splitting the kernel's mappings (kernel/paging has no
// such operation, and splitting would cost TLB reach for the whole app). Nothing breaks if an app
// writes a sealed page anyway: the host's KSM breaks sharing on write (copy on write), so the
// page simply stops being shared while the stale hint costs KSM a few scans.
//
// Thread context only (not interrupt handlers); not reentrant (a nested call returns Busy).
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/error.h"

namespace blimp::mm::sharing {

// Returns the number of pages sealed (0 if the range holds no whole page). InvalidArgument if a
// page is sealed already or is not allocated RAM; LimitReached if the bookkeeping is full.
ErrorOr<uint64_t> seal(const void* ptr, size_t bytes);
// Returns the number of sealed pages unsealed (pages that were not sealed are ignored).
ErrorOr<uint64_t> unseal(const void* ptr, size_t bytes);
bool is_sealed(const void* ptr);

}  // namespace blimp::mm::sharing
