#include "drivers/shared_irq.h"

#include "drivers/log.h"
#include "kernel/interrupts.h"
#include "lib/irq.h"

namespace blimp::drivers {

namespace {

constexpr unsigned kMaxLines = 16;
constexpr unsigned kMaxPerLine = 8;

struct Line {
  bool used;
  unsigned gsi;
  bool level;
  bool active_low;
  uint8_t vector;
  unsigned count;
  struct {
    void (*fn)(void*);
    void* ctx;
  } handlers[kMaxPerLine];
};

Line g_lines[kMaxLines];

void dispatch(void* p) {
  auto* line = static_cast<Line*>(p);
  for (unsigned i = 0; i < line->count; ++i) line->handlers[i].fn(line->handlers[i].ctx);
}

}  // namespace

ErrorOr<uint8_t> attach_gsi(unsigned gsi, bool level_triggered, bool active_low,
                            void (*handler)(void*), void* ctx) {
  IrqGuard guard;  // the dispatcher may run meanwhile: publish a handler before counting it
  Line* line = nullptr;
  for (auto& l : g_lines) {
    if (l.used && l.gsi == gsi) {
      line = &l;
      break;
    }
  }
  if (line) {
    if (line->level != level_triggered || line->active_low != active_low) {
      log("irq: GSI %u already routed with another trigger mode\n", gsi);
      return Error::InvalidArgument;
    }
    if (!line->level) {
      // Edge lines cannot be shared safely: a second device's edge is lost while the first's
      // line is high.
      log("irq: GSI %u is edge-triggered and already in use\n", gsi);
      return Error::Busy;
    }
    if (line->count == kMaxPerLine) return Error::LimitReached;
    line->handlers[line->count] = {handler, ctx};
    ++line->count;
    return line->vector;
  }
  for (auto& l : g_lines) {
    if (!l.used) {
      line = &l;
      break;
    }
  }
  if (!line) return Error::LimitReached;
  line->gsi = gsi;
  line->level = level_triggered;
  line->active_low = active_low;
  line->handlers[0] = {handler, ctx};
  line->count = 1;
  auto vector = interrupts::allocate_vector(&dispatch, line);
  if (vector.is_error()) return vector.error();
  line->vector = vector.value();
  line->used = true;
  auto routed = interrupts::route_gsi(gsi, line->vector, level_triggered, active_low);
  if (routed.is_error()) {
    line->used = false;
    return routed.error();
  }
  return line->vector;
}

}  // namespace blimp::drivers
