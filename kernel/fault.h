// Reporting of CPU exceptions and panics: registers, a frame-pointer backtrace, then the VM
// exits with kFaultExitStatus so a test (or a person) sees a failure instead of a hang.
#pragma once

#include <cstdint>

#include "kernel/arch/descriptor_tables.h"

namespace blimp::fault {

constexpr int kFaultExitStatus = 125;

[[noreturn]] void report_exception(const arch::InterruptFrame& frame);
void print_backtrace(uint64_t rbp);

}  // namespace blimp::fault
