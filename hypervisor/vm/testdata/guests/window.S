# Masks interrupts, spins for 5 ms of PM timer time (so a 1 kHz PIT tick
# becomes pending while masked), prints 'M' if none was taken, then unmasks
# and spins without exits until the tick arrives: only an interrupt-window
# exit (or a watchdog kick, which the test rules out) can deliver it.
.code16
.include "common.inc"
.globl _start
_start:
	prologue
	set_vector 0x20, tick
	pic_init
	pit_1khz
	mov $PM_TMR, %dx
	in %dx, %eax
	mov %eax, %ebx          # start
1:	in %dx, %eax
	sub %ebx, %eax
	and $0xffffff, %eax
	cmp $17898, %eax        # 5 ms at 3.579545 MHz
	jb 1b
	cmpw $0, count
	jne fail
	putc 'M'
	sti
2:	cmpw $0, count          # no exits in this loop
	je 2b
	cli
	putc 'W'
	putc '\n'
	poweroff
fail:
	putc 'F'
	poweroff

tick:
	push %ax
	incw count
	mov $0x20, %al
	out %al, $0x20
	pop %ax
	iret

count:	.word 0
