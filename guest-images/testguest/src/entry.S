/*
 * Ring-0 part of Kite's test guest (AT&T syntax, included by main.rs with global_asm!).
 *
 * Guest ring-0 code is emulated instruction by instruction on the development machines
 * (about 1.3 million instructions/s), so ring 0 only does what ring 3 cannot:
 *
 *   _start       64-bit Linux boot protocol entry (RSI = zero page): CR0/CR4, identity
 *                page tables with the USER bit over the e820 RAM, GDT, TSS (with an
 *                I/O bitmap allowing every port), IDT, then iretq to ring 3 with IOPL=3
 *                and IF=1.
 *   isr_table    one 16-byte stub per vector. Exceptions (and any unexpected vector) go
 *                to exc_common, which records the fault and iretqs to the ring-3 reporter
 *                kite_fault (main.rs). Vectors 0x30..0x4f count device interrupts
 *                (irq_counts[vector - 0x30]), acknowledge a virtio-mmio device
 *                registered for the pin, and EOI the LAPIC. 0x80 is the syscall
 *                gate (DPL 3). 0xff is the LAPIC spurious vector.
 *   ap_tramp_*   real-mode start-up code for application processors, copied below 1 MiB
 *                by ring 3; the AP switches to long mode, checks in and halts.
 *
 * Static tables (page tables, GDT, IDT, TSS) are data in the image, completed at link
 * time (link.ld computes the address pieces the descriptors need), so they cost no ring-0
 * instructions. Only the page-directory entries for RAM are written at run time: about
 * six instructions per 2 MiB page.
 */

    .set KERNEL_CS, 0x08
    .set KERNEL_DS, 0x10
    .set USER_DS, 0x1b          /* GDT index 3, RPL 3 */
    .set USER_CS, 0x23          /* GDT index 4, RPL 3 */
    .set TSS_SEL, 0x28
    .set CODE32_SEL, 0x38
    .set RFLAGS_USER, 0x3202    /* IOPL=3, IF=1 */
    .set RFLAGS_USER_NOIRQ, 0x3002
    .set MAX_GIB, 64            /* physical address space we map: 64 GiB */
    .set MAX_APS, 63            /* application processors with their own stack */
    .set PTE_RAM, 0x87          /* present, writable, user, 2 MiB */
    .set PTE_MMIO, 0x9f         /* ... plus write-through and cache-disable */
    .set IRQ_VECTOR_BASE, 0x30
    .set LAPIC_EOI, 0xfee000b0

/* ------------------------------------------------------------------------------------ */
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    cld
    mov $kernel_stack_top, %rsp
    mov %rsi, zero_page_ptr(%rip)
    mov %rsi, %rbx

    /* CR0: PG|WP|NE|ET|MP|PE (caches on). CR4: PAE|OSFXSR|OSXMMEXCPT, nothing else. */
    mov $0x80010033, %eax
    mov %rax, %cr0
    mov $0x620, %eax
    mov %rax, %cr4

    /* Map every usable (type 1) e820 range below 1 GiB. RAM above is mapped by ring 3
     * (mem::map_ram_above_1gib) into page directories not yet in use, at native speed: ring 0
     * is emulated on the hosts Kite is developed on, and 16 GiB took ~60 ms of it. */
    movzbl 0x1e8(%rbx), %r12d
    cmp $128, %r12d
    jbe 1f
    mov $128, %r12d
1:  lea 0x2d0(%rbx), %r13
2:  test %r12d, %r12d
    jz 4f
    cmpl $1, 16(%r13)
    jne 3f
    mov (%r13), %rdi
    mov 8(%r13), %rsi
    add %rdi, %rsi
    mov $0x40000000, %eax
    cmp %rax, %rdi
    jae 3f
    cmp %rax, %rsi
    cmova %rax, %rsi
    call map_range
3:  add $20, %r13
    dec %r12d
    jmp 2b

    /* The image, the zero page and the command line are in RAM anyway; map them in
     * case the e820 map says otherwise (a no-op normally: ~30 instructions). */
4:  mov $__image_start, %edi
    mov $__image_end, %esi
    call map_range
    mov %rbx, %rdi
    lea 4096(%rbx), %rsi
    call map_range
    mov 0x228(%rbx), %edi
    mov 0xc8(%rbx), %eax
    shl $32, %rax
    or %rax, %rdi
    lea 4096(%rdi), %rsi
    call map_range

    mov $pml4, %eax
    mov %rax, %cr3

    lgdt gdtr(%rip)
    pushq $KERNEL_CS
    lea 5f(%rip), %rax
    push %rax
    lretq
5:  mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $TSS_SEL, %eax
    ltr %ax
    lidt idtr(%rip)

    /* The local APIC must be globally enabled (IA32_APIC_BASE bit 11) for its MMIO page. */
    mov $0x1b, %ecx
    rdmsr
    bt $11, %eax
    jc 6f
    or $0x800, %eax
    wrmsr
    /* Mask both 8259s: interrupts come through the IOAPIC only. */
6:  mov $0xff, %al
    out %al, $0x21
    out %al, $0xa1

    pushq $USER_DS
    pushq $user_stack_top
    pushq $RFLAGS_USER
    pushq $USER_CS
    pushq $ring3_entry
    iretq

/*
 * map_range: identity-map [%rdi, %rsi) with 2 MiB user pages (rounded outwards).
 * Skips the MMIO window 3-4 GiB (mapped statically, uncached) and stops at MAX_GIB.
 * Clobbers %rax, %rcx, %rdx, %rdi, %rsi, %r8.
 */
map_range:
    add $0x1fffff, %rsi
    jc 9f
    and $-0x200000, %rsi
    and $-0x200000, %rdi
1:  cmp %rsi, %rdi
    jae 9f
    mov %rdi, %rax
    shr $30, %rax
    cmp $MAX_GIB, %rax
    jae 9f
    cmp $3, %rax
    je 7f
    mov pdpt(,%rax,8), %rdx
    test %rdx, %rdx
    jnz 3f
    /* First RAM in GiB 1 or 2: its page directory in pd_low (zero in the image). */
    cmp $4, %rax
    jae 5f
    mov %rax, %rdx
    shl $12, %rdx
    add $pd_low, %rdx
    jmp 6f
    /* First RAM in this GiB (above 4 GiB): take a page directory from the pool. */
5:  lea -4(%rax), %rdx
    shl $12, %rdx
    add $pd_pool, %rdx
    mov %rdx, %r8
    mov $512, %ecx
2:  movq $0, (%r8)
    add $8, %r8
    dec %ecx
    jnz 2b
6:  or $7, %rdx
    mov %rdx, pdpt(,%rax,8)
3:  and $-4096, %rdx
    lea 1(%rax), %rcx
    shl $30, %rcx
    cmp %rsi, %rcx
    cmova %rsi, %rcx
    mov %rdi, %r8
    shr $21, %r8
    and $511, %r8
    lea (%rdx,%r8,8), %r8
    lea PTE_RAM(%rdi), %rax
4:  mov %rax, (%r8)
    add $0x200000, %rax
    add $8, %r8
    add $0x200000, %rdi
    cmp %rcx, %rdi
    jb 4b
    jmp 1b
7:  mov $0x100000000, %rdi
    jmp 1b
9:  ret

/* ------------------------------------------------------------------------------------ */
/* Interrupt stubs: vector n at isr_table + 16 * n (the IDT in .data relies on this). */
    .section .text.isr, "ax"
    .set vec, 0
    .rept 256
    .balign 16
    .if vec == 0x80
        jmp syscall_entry
    .elseif vec == 0xff
        iretq
    .else
        .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
        .else
            pushq $0
        .endif
        pushq $vec
        .if (vec >= IRQ_VECTOR_BASE) && (vec < IRQ_VECTOR_BASE + 32)
            jmp irq_common
        .else
            jmp exc_common
        .endif
    .endif
    .set vec, vec + 1
    .endr
    .balign 16
    .globl isr_end
isr_end:

    .text
/* Device interrupt: if a virtio-mmio device is registered for the pin (virtio.rs),
 * acknowledge it (read InterruptStatus, write it to InterruptACK, OR it into virtio_isr);
 * then count it and EOI the local APIC. Stack: vector, 0, iret frame. */
irq_common:
    push %rax
    push %rdx
    mov 16(%rsp), %rax
    mov (virtio_mmio_base - IRQ_VECTOR_BASE * 8)(,%rax,8), %rdx
    test %rdx, %rdx
    jz 1f
    push %rcx
    mov 0x60(%rdx), %ecx
    mov %ecx, 0x64(%rdx)
    lock orl %ecx, (virtio_isr - IRQ_VECTOR_BASE * 4)(,%rax,4)
    pop %rcx
1:  lock incq (irq_counts - IRQ_VECTOR_BASE * 8)(,%rax,8)
    mov $LAPIC_EOI, %eax
    movl $0, (%rax)
    pop %rdx
    pop %rax
    add $16, %rsp
    iretq

/* Exception (or unexpected vector): record it and continue in ring 3 at kite_fault, on
 * the fault stack with interrupts off. Stack: vector, error code, iret frame. */
exc_common:
    cmpb $0, fault_active(%rip)
    jne fault_again
    movb $1, fault_active(%rip)
    push %rax
    mov 8(%rsp), %rax
    mov %rax, fault_vector(%rip)
    mov 16(%rsp), %rax
    mov %rax, fault_error(%rip)
    mov 24(%rsp), %rax
    mov %rax, fault_rip(%rip)
    mov 32(%rsp), %rax
    mov %rax, fault_cs(%rip)
    mov %cr2, %rax
    mov %rax, fault_cr2(%rip)
    pop %rax
    pushq $USER_DS
    pushq $fault_stack_top
    pushq $RFLAGS_USER_NOIRQ
    pushq $USER_CS
    pushq $ring3_fault
    iretq
fault_again:
    /* A fault while reporting one: reset, or failing that, triple-fault. */
    mov $0xfe, %al
    out %al, $0x64
die:
    lidt null_idtr(%rip)
    int3
    jmp die

/*
 * int 0x80: %rax = number, %rdi/%rsi = arguments, result in %rax; other registers kept.
 *   0 nop    1 halt until an interrupt    2 rdmsr(%rdi)    3 wrmsr(%rdi, %rsi)
 *   4 end the VM by triple fault          5 reload CR3 (flush the TLB)
 */
syscall_entry:
    cmp $1, %rax
    je sys_halt
    cmp $2, %rax
    je sys_rdmsr
    cmp $3, %rax
    je sys_wrmsr
    cmp $4, %rax
    je die
    cmp $5, %rax
    je sys_reload_cr3
    test %rax, %rax
    jz 1f
    mov $-1, %rax
    iretq
1:  iretq
sys_halt:
    sti
    hlt
    cli
    xor %eax, %eax
    iretq
sys_rdmsr:
    push %rcx
    push %rdx
    mov %edi, %ecx
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    pop %rdx
    pop %rcx
    iretq
sys_wrmsr:
    push %rcx
    push %rdx
    mov %edi, %ecx
    mov %rsi, %rax
    mov %rsi, %rdx
    shr $32, %rdx
    wrmsr
    pop %rdx
    pop %rcx
    xor %eax, %eax
    iretq
sys_reload_cr3:
    mov %cr3, %rax
    mov %rax, %cr3
    xor %eax, %eax
    iretq

/* ------------------------------------------------------------------------------------ */
/* Ring 3 from here on (native speed). */
ring3_entry:
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    fninit
    ldmxcsr mxcsr_init(%rip)
    mov zero_page_ptr(%rip), %rdi
    xor %ebp, %ebp
    call kite_main
    ud2

ring3_fault:
    xor %ebp, %ebp
    call kite_fault
    ud2

/* ------------------------------------------------------------------------------------ */
/*
 * Application processor start-up. ap_tramp_start..ap_tramp_end is copied by ring 3 to a
 * 4 KiB-aligned page below 1 MiB; the SIPI vector is that page number. It only uses
 * addresses relative to CS, then jumps to ap_pm32 in the image (paging is off).
 */
    .code16
    .globl ap_tramp_start
    .globl ap_tramp_end
ap_tramp_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (ap_tramp_gdtr - ap_tramp_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $CODE32_SEL, $ap_pm32
    .balign 8
ap_tramp_gdtr:
    .word gdt_end - gdt - 1
    .long gdt
ap_tramp_end:

    .code32
ap_pm32:
    mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $0x80010033, %eax
    mov %eax, %cr0
    ljmp $KERNEL_CS, $ap_lm64

    .code64
ap_lm64:
    mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $1, %eax
    lock xadd %eax, ap_next_index(%rip)
    cmp $MAX_APS, %eax
    jae 1f
    inc %eax
    shl $12, %rax
    add $ap_stacks, %rax
    mov %rax, %rsp
    lidt idtr(%rip)
1:  lock incl ap_checkin(%rip)
2:  cli
    hlt
    jmp 2b

/* ------------------------------------------------------------------------------------ */
    .section .data.pagetables, "aw"
    .balign 4096
    .globl pml4
pml4:
    .quad pdpt + 7
    .fill 511, 8, 0
    .globl pdpt
pdpt:
    .quad pd_low + 0x0000 + 7
    .quad 0                     /* GiB 1 and 2: linked to pd_low when first mapped */
    .quad 0
    .quad pd_low + 0x3000 + 7
    .fill 508, 8, 0
/* Page directories for 0-3 GiB (filled from e820 at boot) and 3-4 GiB (the MMIO window,
 * uncached, complete at link time). */
    .globl pd_low
pd_low:
    .fill 3 * 512, 8, 0
    .set addr, 0xc0000000
    .rept 512
    .quad addr + PTE_MMIO
    .set addr, addr + 0x200000
    .endr

    .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff    /* 0x10 kernel data */
    .quad 0x00cff2000000ffff    /* 0x18 user data, DPL 3 */
    .quad 0x00affa000000ffff    /* 0x20 user code, 64-bit, DPL 3 */
    .word tss_end - tss - 1     /* 0x28 64-bit TSS (16 bytes), with I/O bitmap */
    .word tss_lo16
    .byte tss_b2
    .byte 0x89
    .byte 0
    .byte tss_b3
    .long 0
    .long 0
    .quad 0x00cf9a000000ffff    /* 0x38 kernel code, 32-bit (AP start-up) */
gdt_end:

    .balign 16
    .word 0, 0, 0
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt
    .word 0, 0, 0
idtr:
    .word idt_end - idt - 1
    .quad idt
    .word 0, 0, 0
null_idtr:
    .word 0
    .quad 0

    .balign 16
    .globl tss
tss:
    .long 0
    .quad kernel_stack_top      /* RSP0: stack for interrupts from ring 3 */
    .quad 0, 0                  /* RSP1, RSP2 */
    .quad 0
    .quad 0, 0, 0, 0, 0, 0, 0   /* IST1-7 */
    .quad 0
    .word 0
    .word 104                   /* I/O permission bitmap offset */
/* Every port allowed. IOPL=3 alone should do, but hypervisors that keep the real IOPL at 0
 * for the guest (the PVM KVM on the development machines) honour only this bitmap. */
    .fill 8192, 1, 0
    .byte 0xff                  /* the bitmap's required terminator */
tss_end:

    .balign 16
    .globl idt
idt:
    .set vec, 0
    .rept 256
    .word isr_lo16 + vec * 16
    .word KERNEL_CS
    .byte 0
    .if vec == 0x80
    .byte 0xee                  /* interrupt gate, DPL 3 */
    .else
    .byte 0x8e                  /* interrupt gate, DPL 0 */
    .endif
    .word isr_hi16
    .long 0
    .long 0
    .set vec, vec + 1
    .endr
idt_end:

    .balign 8
    .globl zero_page_ptr
zero_page_ptr:  .quad 0
mxcsr_init:     .long 0x1f80
/* Written by ring 0 on an exception, read by kite_fault. */
    .balign 8
    .globl fault_vector, fault_error, fault_rip, fault_cs, fault_cr2, fault_active
fault_vector:   .quad 0
fault_error:    .quad 0
fault_rip:      .quad 0
fault_cs:       .quad 0
fault_cr2:      .quad 0
fault_active:   .byte 0
/* AP start-up: reset by the BSP before it sends SIPIs. */
    .balign 4
    .globl ap_next_index, ap_checkin
ap_next_index:  .long 0
ap_checkin:     .long 0

    .bss
    .balign 8
    .globl irq_counts, virtio_mmio_base, virtio_isr
irq_counts:     .skip 32 * 8
/* Per IOAPIC pin: the virtio-mmio window to acknowledge (0: none), and the InterruptStatus
 * bits seen. Written by ring 3 (virtio.rs) before it routes the pin. */
virtio_mmio_base: .skip 32 * 8
virtio_isr:     .skip 32 * 4

    .section .noinit, "aw", @nobits
    .balign 4096
kernel_stack:   .skip 16384
kernel_stack_top:
user_stack:     .skip 256 * 1024
    .globl user_stack_top
user_stack_top:
fault_stack:    .skip 32768
fault_stack_top:
ap_stacks:      .skip MAX_APS * 4096
    .balign 4096
    .globl pd_pool
pd_pool:        .skip (MAX_GIB - 4) * 4096

    .text
