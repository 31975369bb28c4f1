// Hooks the real drivers into drivers::init(), ahead of the probe-only ones.
#include "drivers/balloon/balloon.h"
#include "drivers/drivers.h"

namespace blimp::drivers {

void register_extra_drivers() { balloon::Balloon::register_driver(); }

}  // namespace blimp::drivers
