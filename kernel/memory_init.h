// Hands the firmware's usable RAM to the memory manager (mm/).
#pragma once

#include "kernel/boot/boot_info.h"

namespace blimp {

void init_memory(const BootInfo& boot);

}  // namespace blimp
