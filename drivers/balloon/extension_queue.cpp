// The Blimp extension queue (docs/spec-virtio-balloon-blimp.md, section 3): one request at a
// time, a device-readable header and entries, a device-writable response.
#include "drivers/balloon/balloon.h"
#include "drivers/balloon/balloon_internal.h"
#include "kernel/console.h"
#include "lib/format.h"
#include "lib/irq.h"

namespace blimp::balloon {

using namespace detail;

ErrorOr<BlimpResponse> Balloon::blimp_request(uint16_t type, const void* entries, uint32_t count,
                                              size_t entry_size) {
  if (!blimp_vq_) return Error::Unsupported;
  if (count > kBlimpMaxEntries || (count && !entries)) return Error::InvalidArgument;
  // A device that did not complete its reset forgot nothing: it may still act on earlier
  // requests and on what they registered (the page-state array). Nothing more is lent to it, and
  // the answer is the one that says so; DeviceError would tell the caller it forgot everything.
  if (lost_) return Error::Timeout;
  {
    IrqGuard guard;
    if (blimp_busy_) return Error::Busy;
    blimp_busy_ = true;
  }
  BlimpRequestHeader& header = g_buf.blimp_header;
  BlimpResponse& response = g_buf.blimp_response;
  header = {type, 0, count, 0};
  response = {~0u, 0, 0, 0};
  virtio::Segment out[2] = {{virt_to_phys(&header), sizeof header},
                            {virt_to_phys(entries), uint32_t(count * entry_size)}};
  virtio::Segment in[1] = {{virt_to_phys(&response), sizeof response}};
  ErrorOr<BlimpResponse> result = Error::DeviceError;
  auto r = post(*blimp_vq_, std::span<const virtio::Segment>(out, count ? 2 : 1),
                std::span<const virtio::Segment>(in, 1), tokens_.blimp, 0, 0);
  if (r.is_error()) {
    result = r.error();
  } else {
    blimp_vq_->kick();
    auto used = wait_used(*blimp_vq_);
    if (used.is_error()) {
      // DeviceError: the device was reset and forgot the request (and what it registered).
      // Timeout: the device is lost and may still read the entries: the caller keeps them.
      result = lost_ ? Error::Timeout : Error::DeviceError;
    } else if (used.value()->used_len >= sizeof response) {
      result = response;
    } else {
      // A device that says it wrote less than a response may or may not have done what was
      // asked: reset it, so that whatever it did is forgotten too.
      char why[80];
      format(why, sizeof why, "blimpq answered request type %u with %u bytes, not a response", type,
             used.value()->used_len);
      reset_device(why);
      result = lost_ ? Error::Timeout : Error::DeviceError;
    }
  }
  blimp_busy_ = false;
  return result;
}

}  // namespace blimp::balloon
