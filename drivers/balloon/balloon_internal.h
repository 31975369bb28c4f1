// What the balloon's source files (one per spec section) share and nobody else sees.
#pragma once

#include <cstdint>

#include "drivers/balloon/balloon_protocol.h"
#include "drivers/balloon/device_buffers.h"

namespace blimp::balloon::detail {

// The balloon's device-visible buffers and its scratch (balloon.cpp defines them).
extern DeviceBuffers g_buf;
extern Scratch g_scratch;

// A wait longer than this reads the device status (a reset raises no interrupt), then again at
// this interval.
constexpr uint64_t kAliveCheckNs = 20000000ull;
// A wait this long notifies the queue again, and again each time it passes: a notification can
// be lost (see Virtqueue::notify_again), and one more costs the device nothing.
constexpr uint64_t kRenotifyNs = 1000000000ull;
constexpr unsigned kReportOrder = 9;  // 2 MiB
// A descriptor's length is 32 bits: longer runs go out as several 1 GiB segments.
constexpr uint64_t kMaxSegmentPages = 1ull << 18;

inline uint64_t mib(uint64_t pages) { return pages >> (20 - kBalloonPageShift); }

}  // namespace blimp::balloon::detail
