/*
 * Interrupt entry stubs for all 256 vectors. Each pushes a dummy error code where the CPU does
 * not, then its vector number, and joins isr_common, which saves every general register and the
 * x87/SSE state (interrupts arrive while the app uses SSE), and calls
 * interrupt_dispatch(InterruptFrame*). The layout must match InterruptFrame in descriptor_tables.h.
 */
.code64
.section .text

.macro ISR vector
.balign 16
isr_\vector:
  .if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
  .else
  pushq $0
  .endif
  pushq $\vector
  jmp isr_common
.endm

.altmacro
.macro ISR_N n
  ISR %n
.endm
.set i, 0
.rept 256
  ISR_N %i
  .set i, i + 1
.endr

isr_common:
  pushq %rax
  pushq %rbx
  pushq %rcx
  pushq %rdx
  pushq %rsi
  pushq %rdi
  pushq %rbp
  pushq %r8
  pushq %r9
  pushq %r10
  pushq %r11
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  mov %rsp, %rdi              /* InterruptFrame* */
  sub $512, %rsp              /* the stack is 16-byte aligned here (see DESIGN in descriptor_tables.h) */
  fxsaveq (%rsp)
  cld
  call interrupt_dispatch
  fxrstorq (%rsp)
  add $512, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %r11
  popq %r10
  popq %r9
  popq %r8
  popq %rbp
  popq %rdi
  popq %rsi
  popq %rdx
  popq %rcx
  popq %rbx
  popq %rax
  add $16, %rsp               /* vector, error code */
  iretq

.macro ISR_ADDR n
  .quad isr_\n
.endm
.section .rodata
.balign 8
.global isr_table
isr_table:
.set i, 0
.rept 256
  ISR_ADDR %i
  .set i, i + 1
.endr
