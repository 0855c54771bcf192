# Arms a PIT one-shot (channel 0, mode 0, count 65535: about 54.9 ms), halts,
# and after the timer interrupt wakes it prints the PM timer ticks that
# passed as six hex digits, then powers off.
.code16
.include "common.inc"
.globl _start
_start:
	prologue
	set_vector 0x20, tick
	pic_init
	mov $PM_TMR, %dx
	in %dx, %eax
	mov %eax, start
	mov $0x30, %al          # channel 0, lobyte/hibyte, mode 0
	out %al, $0x43
	mov $0xff, %al
	out %al, $0x40
	out %al, $0x40
	sti
1:	hlt
	cmpw $0, count
	je 1b
	cli
	mov $PM_TMR, %dx
	in %dx, %eax
	sub start, %eax
	and $0xffffff, %eax
	mov %eax, %ebx
	mov $6, %cx             # six hex digits, most significant first
2:	mov %ebx, %eax
	shr $20, %eax
	and $0xf, %al
	add $'0', %al
	cmp $'9', %al
	jbe 3f
	add $('a' - '9' - 1), %al
3:	mov $COM1, %dx
	out %al, %dx
	shl $4, %ebx
	loop 2b
	putc '\n'
	poweroff

tick:
	push %ax
	incw count
	mov $0x20, %al
	out %al, $0x20
	pop %ax
	iret

count:	.word 0
start:	.long 0
