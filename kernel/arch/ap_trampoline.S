/*
 * Application processor start-up code. The BSP copies [ap_trampoline_start, ap_trampoline_end)
 * to a page below 1 MiB (the start-up IPI's vector is that page's number) and fills in the
 * parameter block at its end; each AP then runs it from real mode (Intel SDM vol. 3A, 9.4.4.2
 * "Typical AP Initialization Sequence", and 10.8.5 "Initializing IA-32e Mode": protected mode with
 * paging off first, then PAE, CR3, EFER.LME, paging).
 *
 * The code is position independent: CS:IP = (page >> 4):0, so the linear base is CS << 4; every
 * far jump goes through a pointer the BSP computed for the page. Several APs may run it at once
 * (one that comes up after the BSP gave up on it, beside the next one): nothing here writes to
 * memory, and there is no stack until an AP has found its own, by its APIC ID, in
 * ap_stack_by_apic_id (a zero entry: this AP was not asked to start, it parks).
 */
#include "kernel/arch/long_mode.inc"

.section .rodata.ap_trampoline, "a"
.code16
.balign 16
.global ap_trampoline_start
ap_trampoline_start:
  cli
  cld
  mov %cs, %ax
  mov %ax, %ds
  xor %ebx, %ebx                     /* EBX = the page's linear base, for 32-bit mode */
  mov %ax, %bx
  shl $4, %ebx
  lgdtl tramp_gdtr - ap_trampoline_start
  mov %cr0, %eax
  or $1, %eax                        /* PE */
  mov %eax, %cr0
  ljmpl *(tramp_far32 - ap_trampoline_start)

.code32
tramp_protected:
  mov $0x10, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  /* The BSP's page tables, and the BSP's control bits. */
  enable_long_mode "(tramp_cr3 - ap_trampoline_start)(%ebx)"
  ljmpl *(tramp_far64 - ap_trampoline_start)(%ebx)

.code64
tramp_long:
  movabsq $ap_long_mode, %rax
  jmp *%rax

.balign 8
tramp_gdt:
  .quad 0
  .quad 0x00cf9a000000ffff           /* 0x08: 32-bit code */
  .quad 0x00cf92000000ffff           /* 0x10: data */
  .quad 0x00af9a000000ffff           /* 0x18: 64-bit code */
tramp_gdt_end:
/* Parameter block, filled by the BSP (kernel/smp.cpp, TrampolineParams): */
.balign 8
.global ap_trampoline_params
ap_trampoline_params:
tramp_gdtr:
  .short tramp_gdt_end - tramp_gdt - 1
  .long 0                            /* linear address of tramp_gdt */
  .short 0
tramp_far32:
  .long 0                            /* linear address of tramp_protected */
  .short 0x08
  .short 0
tramp_far64:
  .long 0                            /* linear address of tramp_long */
  .short 0x18
  .short 0
tramp_cr3:
  .long 0
.global ap_trampoline_end
ap_trampoline_end:

/* Offsets the BSP needs to fill the parameter block. */
.global ap_trampoline_gdt_offset, ap_trampoline_protected_offset, ap_trampoline_long_offset
.set ap_trampoline_gdt_offset, tramp_gdt - ap_trampoline_start
.set ap_trampoline_protected_offset, tramp_protected - ap_trampoline_start
.set ap_trampoline_long_offset, tramp_long - ap_trampoline_start

/*
 * Long mode on the trampoline's GDT. Look up this CPU's stack by its initial APIC ID (CPUID leaf
 * 1, EBX[31:24]; xAPIC IDs only, as the BSP starts no other), then ap_main(apic_id) on it.
 */
.section .text
.global ap_long_mode
ap_long_mode:
  mov $0x10, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  xor %ax, %ax
  mov %ax, %fs
  mov %ax, %gs
  mov $1, %eax
  cpuid
  shr $24, %ebx
  lea ap_stack_by_apic_id(%rip), %rax
  mov (%rax, %rbx, 8), %rsp
  test %rsp, %rsp
  jz 2f
  fninit
  xor %ebp, %ebp                     /* terminates backtraces */
  mov %ebx, %edi
  call ap_main
2:
  cli
  hlt
  jmp 2b
