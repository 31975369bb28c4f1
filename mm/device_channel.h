// The device channel mm's cooperative-memory features (page states, sharing) talk through: the
// Blimp extension queue of the balloon device, its features and its reset listeners.
//
// mm sits below drivers/, so it never names the balloon driver: the driver implements this
// interface (balloon::Balloon), and kernel/main.cpp, which wires the layers together at boot,
// hands it (or nullptr when no balloon was bound) to page_states::init() and sharing::init().
#pragma once

#include <cstddef>
#include <cstdint>

#include "lib/blimp_wire.h"
#include "lib/error.h"

namespace blimp::mm {

// What a reset listener answers (drivers/balloon/reset_listeners.h runs them).
enum class ResetListenerResult {
  Done,   // re-registered (or failed for good: the listener has logged why)
  Retry,  // cannot run now; run again later
};
using ResetListenerFn = ResetListenerResult (*)(void* ctx);

class DeviceChannel {
 public:
  // The device offers the page-state array / sharing hints (and their queue was set up).
  virtual bool has_page_states() const = 0;
  virtual bool has_share_hints() const = 0;

  // Sends one extension-queue request (header + `count` entries of `entry_size` bytes at
  // `entries`, which must stay valid until it returns) and waits for the device's response.
  // Thread or work context, not interrupt context. Errors: Unsupported (extension not
  // negotiated), Busy (another request in progress), InvalidArgument (count), DeviceError (no
  // answer in time, a broken queue, a short response: the device was reset, so it forgot the
  // request and everything the extensions registered), Timeout (the device could not even be
  // reset: it may still read `entries` and act on the request, so keep them and what they point
  // at; every later request answers Timeout too, unsent, since the device may still act on
  // anything registered before).
  virtual ErrorOr<wire::BlimpResponse> send(uint16_t type, const void* entries, uint32_t count,
                                            size_t entry_size) = 0;

  // Runs `fn(ctx)` from the driver's work after every device reset it recovered from, once the
  // device works again; Retry runs it again later (a bounded number of times). The same fn/ctx
  // twice is one listener. LimitReached when there is no room.
  virtual ErrorOr<void> add_reset_listener(ResetListenerFn fn, void* ctx) = 0;

 protected:
  ~DeviceChannel() = default;
};

}  // namespace blimp::mm
