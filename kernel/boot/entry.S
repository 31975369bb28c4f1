/*
 * 32-bit entry for both boot protocols, and the switch to long mode.
 *
 *  PVH (QEMU -kernel, Xen): the Xen ELF note below names _start_pvh; the loader enters it in
 *    32-bit protected mode, paging off, with EBX = guest-physical address of hvm_start_info.
 *  multiboot2 (GRUB): the header below names _start_mb2 through its entry-address tag; GRUB enters
 *    it with EAX = 0x36d76289 and EBX = the multiboot2 information structure.
 *
 * There is deliberately no multiboot1 header: QEMU -kernel would take it and refuse an ELF64.
 * Both paths identity-map the first 4 GiB with 2 MiB pages (RAM above that is mapped from C++),
 * enable SSE (newlib's printf and apps use it), enter long mode and call
 * kernel_main(protocol, info_phys).
 */
#include "kernel/arch/long_mode.inc"
#include "kernel/boot/boot_protocol.h"

#define MB2_MAGIC 0xe85250d6
#define MB2_ARCH_I386 0

.section .multiboot2, "a"
.balign 8
mb2_header:
  .long MB2_MAGIC
  .long MB2_ARCH_I386
  .long mb2_header_end - mb2_header
  .long -(MB2_MAGIC + MB2_ARCH_I386 + (mb2_header_end - mb2_header))
  /* entry address tag (type 3): GRUB would otherwise jump to the ELF64 e_entry */
  .balign 8
  .short 3, 0
  .long 12
  .long _start_mb2
  .balign 8
  /* end tag */
  .short 0, 0
  .long 8
mb2_header_end:

/* Xen ELF note type 18 (XEN_ELFNOTE_PHYS32_ENTRY): the PVH entry point, an 8-byte descriptor. */
.section .note.Xen, "a", @note
.balign 4
  .long 4          /* namesz: "Xen\0" */
  .long 8          /* descsz */
  .long 18         /* type */
  .asciz "Xen"
  .balign 4
  .quad _start_pvh
  .balign 4

.section .boot.text, "ax"
.code32
.global _start_pvh
_start_pvh:
  cli
  cld
  mov $BOOT_PROTOCOL_PVH, %esi
  mov %ebx, %edi
  jmp common32

.global _start_mb2
_start_mb2:
  cli
  cld
  mov $BOOT_PROTOCOL_MULTIBOOT2, %esi
  mov %ebx, %edi
  cmp $0x36d76289, %eax
  je common32
  mov $BOOT_PROTOCOL_UNKNOWN, %esi

common32:
  /* Zero .bss, which holds the boot page tables and stack: loaders need not zero it. */
  mov $__bss_start, %edx
  mov %edi, %ebp            /* keep info pointer: stosb uses edi */
  mov %edx, %edi
  mov $__bss_end, %ecx
  sub %edx, %ecx
  xor %eax, %eax
  rep stosb
  mov %ebp, %edi

  mov $boot_stack_top, %esp

  /* PML4[0] -> PDPT; PDPT[0..3] -> PD0..PD3; each PD maps 1 GiB with 2 MiB pages. */
  mov $boot_pml4, %eax
  movl $boot_pdpt + 0x3, (%eax)            /* present | writable */
  mov $boot_pdpt, %eax
  movl $boot_pd + 0x3, 0(%eax)
  movl $boot_pd + 0x1000 + 0x3, 8(%eax)
  movl $boot_pd + 0x2000 + 0x3, 16(%eax)
  movl $boot_pd + 0x3000 + 0x3, 24(%eax)
  mov $boot_pd, %ebx
  xor %ecx, %ecx                           /* entry index 0..2047 */
1:
  mov %ecx, %eax
  shl $21, %eax                            /* low 32 bits of physical address */
  or $0x83, %eax                           /* present | writable | 2 MiB page */
  cmp $1536, %ecx                          /* >= 3 GiB: device windows, uncached */
  jb 2f
  or $0x18, %eax                           /* PWT | PCD */
2:
  mov %eax, (%ebx, %ecx, 8)
  movl $0, 4(%ebx, %ecx, 8)
  inc %ecx
  cmp $2048, %ecx
  jne 1b

  enable_long_mode $boot_pml4

  lgdt boot_gdt_ptr
  ljmp $0x08, $long_mode_entry

.code64
long_mode_entry:
  mov $0x10, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  xor %ax, %ax
  mov %ax, %fs
  mov %ax, %gs
  fninit
  mov $boot_stack_top, %rsp
  xor %rbp, %rbp            /* terminates backtraces */
  /* edi = info phys, esi = protocol; kernel_main(protocol, info) */
  mov %edi, %eax
  mov %esi, %edi
  mov %eax, %esi
  call kernel_main
3:
  cli
  hlt
  jmp 3b

.section .boot.rodata, "a"
.balign 16
boot_gdt:
  .quad 0
  .quad 0x00af9a000000ffff   /* 0x08: 64-bit code */
  .quad 0x00cf92000000ffff   /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
  .short boot_gdt_end - boot_gdt - 1
  .long boot_gdt

.section .bootbss, "aw", @nobits
.balign 4096
.global boot_pml4
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
.global boot_pd
boot_pd: .skip 4096 * 4
.balign 16
.global boot_stack_bottom
boot_stack_bottom: .skip 64 * 1024
.global boot_stack_top
boot_stack_top:
