# Writes a line to COM1 and powers off.
.code16
.include "common.inc"
.globl _start
_start:
	mov $msg, %si
1:	lodsb
	test %al, %al
	jz 2f
	mov $COM1, %dx
	out %al, %dx
	jmp 1b
2:	poweroff
msg:	.asciz "hello from ring 0\n"
