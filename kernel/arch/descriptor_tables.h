// GDT (with a TSS whose interrupt stacks catch double faults and NMIs on a known-good stack),
// IDT over the 256 stubs in isr.S, and the frame those stubs build.
//
// Stack alignment: in long mode the CPU aligns RSP to 16 before pushing its 5-word frame; the
// stub pushes an error code (real or dummy), the vector and 15 registers: 22 words in all, so
// RSP is 16-aligned again for fxsave and the call.
#pragma once

#include <cstdint>

namespace blimp::arch {

struct InterruptFrame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error_code;
  uint64_t rip, cs, rflags, rsp, ss;
};

void init_descriptor_tables();

}  // namespace blimp::arch
