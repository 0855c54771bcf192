# Prints 'T', loads an empty IDT and raises an exception: with no handler
# for the exception, the double fault or the triple fault, the CPU shuts
# down (KVM_EXIT_SHUTDOWN).
.code16
.include "common.inc"
.globl _start
_start:
	cli
	putc 'T'
	lidt empty_idt
	int $3
	hlt
empty_idt:
	.word 0
	.long 0
