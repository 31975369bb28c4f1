#include "kernel/fault.h"

#include <cstdarg>

#include "kernel/arch/cpu.h"
#include "kernel/console.h"
#include "kernel/panic.h"
#include "kernel/percpu.h"
#include "kernel/power.h"
#include "lib/atomic.h"

extern "C" char __kernel_start[], __kernel_end[];

namespace blimp::fault {
namespace {

const char* exception_name(uint64_t v) {
  static const char* const names[32] = {"divide error",
                                        "debug",
                                        "NMI",
                                        "breakpoint",
                                        "overflow",
                                        "bound range exceeded",
                                        "invalid opcode",
                                        "device not available",
                                        "double fault",
                                        "coprocessor overrun",
                                        "invalid TSS",
                                        "segment not present",
                                        "stack fault",
                                        "general protection fault",
                                        "page fault",
                                        "reserved",
                                        "x87 floating-point error",
                                        "alignment check",
                                        "machine check",
                                        "SIMD floating-point error",
                                        "virtualization",
                                        "control protection",
                                        "reserved",
                                        "reserved",
                                        "reserved",
                                        "reserved",
                                        "reserved",
                                        "reserved",
                                        "hypervisor injection",
                                        "VMM communication",
                                        "security",
                                        "reserved"};
  return v < 32 ? names[v] : "interrupt";
}

// Set by the first CPU to report: a second report (a fault while reporting, or another CPU
// faulting meanwhile) only stops the VM, so that the first one's lines stay whole.
blimp::Atomic<bool> in_progress{false};

}  // namespace

void print_backtrace(uint64_t rbp) {
  kprintf("backtrace (resolve with: addr2line -e build/blimp.elf ADDR):\n");
  for (int depth = 0; depth < 24 && rbp; depth++) {
    // Frames live on the boot stack or the fault stacks, all inside the kernel image.
    if ((rbp & 7) || rbp < reinterpret_cast<uint64_t>(__kernel_start) ||
        rbp + 16 > reinterpret_cast<uint64_t>(__kernel_end)) {
      kprintf("  (frame pointer %#lx outside the kernel stacks; stopping)\n", rbp);
      break;
    }
    auto* frame = reinterpret_cast<const uint64_t*>(rbp);
    if (frame[1] == 0) break;
    kprintf("  #%d %#lx\n", depth, frame[1]);
    rbp = frame[0];
  }
}

void report_exception(const arch::InterruptFrame& f) {
  if (in_progress.exchange(true)) power::exit(kFaultExitStatus);
  kprintf("\n*** blimp: CPU exception %lu (%s), error code %#lx\n", f.vector,
          exception_name(f.vector), f.error_code);
  if (percpu::cpu_index() != 0) kprintf("    on cpu %zu (an AP)\n", percpu::cpu_index());
  if (f.vector == 14) {
    uint64_t cr2 = arch::read_cr2();
    kprintf("    page fault at address %#lx (%s, %s)%s\n", cr2,
            f.error_code & 1 ? "protection" : "not present", f.error_code & 2 ? "write" : "read",
            cr2 < 4096 ? ": null pointer dereference" : "");
  }
  kprintf("    rip=%016lx cs=%04lx rflags=%016lx rsp=%016lx ss=%04lx\n", f.rip, f.cs, f.rflags,
          f.rsp, f.ss);
  kprintf("    rax=%016lx rbx=%016lx rcx=%016lx rdx=%016lx\n", f.rax, f.rbx, f.rcx, f.rdx);
  kprintf("    rsi=%016lx rdi=%016lx rbp=%016lx r8 =%016lx\n", f.rsi, f.rdi, f.rbp, f.r8);
  kprintf("    r9 =%016lx r10=%016lx r11=%016lx r12=%016lx\n", f.r9, f.r10, f.r11, f.r12);
  kprintf("    r13=%016lx r14=%016lx r15=%016lx\n", f.r13, f.r14, f.r15);
  kprintf("  #  %#lx (faulting instruction)\n", f.rip);
  print_backtrace(f.rbp);
  kprintf("*** blimp: stopping the VM (exit status %d)\n", kFaultExitStatus);
  power::exit(kFaultExitStatus);
}

}  // namespace blimp::fault

void panic(const char* fmt, ...) {
  asm volatile("cli");
  kprintf("\n*** blimp: PANIC: ");
  va_list ap;
  va_start(ap, fmt);
  kvprintf(fmt, ap);
  va_end(ap);
  kprintf("\n");
  blimp::fault::print_backtrace(reinterpret_cast<uint64_t>(__builtin_frame_address(0)));
  kprintf("*** blimp: stopping the VM (exit status %d)\n", blimp::fault::kFaultExitStatus);
  blimp::power::exit(blimp::fault::kFaultExitStatus);
}
