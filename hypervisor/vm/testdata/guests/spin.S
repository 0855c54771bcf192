# Prints 'S', then spins forever with interrupts masked and no exits: only a
# kick (Ctrl-C, a cancelled context) can take the vCPU back.
.code16
.include "common.inc"
.globl _start
_start:
	cli
	putc 'S'
1:	jmp 1b
