# Counts 100 PIT interrupts (channel 0, mode 2, 1 kHz) while halting between
# them, printing '.' in the handler, then prints '\n' and powers off.
.code16
.include "common.inc"
.globl _start
_start:
	cli
	xor %ax, %ax
	mov %ax, %ds
	mov %ax, %ss
	mov $0x8000, %sp
	set_vector 0x20, tick
	pic_init
	mov $0x34, %al          # channel 0, lobyte/hibyte, mode 2
	out %al, $0x43
	mov $0xa9, %al          # 1193 = 0x04a9: 1 ms
	out %al, $0x40
	mov $0x04, %al
	out %al, $0x40
	sti
1:	hlt
	cmpw $100, count
	jb 1b
	cli
	putc '\n'
	poweroff

tick:
	push %ax
	push %dx
	incw count
	putc '.'
	mov $0x20, %al          # non-specific EOI
	out %al, $0x20
	pop %dx
	pop %ax
	iret

count:	.word 0
