# Counts 100 PIT interrupts (channel 0, mode 2, 1 kHz) while halting between
# them, printing '.' in the handler, then prints '\n' and powers off.
.code16
.include "common.inc"
.globl _start
_start:
	prologue
	set_vector 0x20, tick
	pic_init
	pit_1khz
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
