# Walks guest pages 0x10-0x4f (0x10000-0x4ffff), one per step, for 600
# steps: adds a running value x to a dword of the step's page, folds the
# dword's old content into x, and prints one letter of x ('a'-'p'), then
# powers off. What it prints depends on its registers and on everything it
# wrote before, and between two of its OUTs it writes exactly one page (no
# stack, no interrupts): page 0x10 + step%64.
.code16
.include "common.inc"
.set STEPS, 600
.globl _start
_start:
	prologue
	mov $0x12345678, %esi   # x
	xor %ebp, %ebp          # step
1:	mov %bp, %ax
	and $63, %ax
	add $0x10, %ax
	shl $8, %ax             # the segment of page 0x10 + step%64
	mov %ax, %es
	mov %esi, %edi
	shr $7, %edi
	and $0xffc, %edi        # a dword in the page, chosen by x
	mov %es:(%di), %eax     # old content
	mov %eax, %ebx
	add %esi, %eax
	mov %eax, %es:(%di)     # the step's one memory write
	mov %esi, %eax          # x = xorshift32(x) + old
	shl $13, %eax
	xor %eax, %esi
	mov %esi, %eax
	shr $17, %eax
	xor %eax, %esi
	mov %esi, %eax
	shl $5, %eax
	xor %eax, %esi
	add %ebx, %esi
	mov %esi, %eax
	and $15, %al
	add $'a', %al
	mov $COM1, %dx
	out %al, %dx
	inc %ebp
	cmp $STEPS, %ebp
	jb 1b
	putc '\n'
	poweroff
