# Arms a PIT one-shot of about 1 ms (channel 0, mode 0, count 1193) with
# interrupts masked, spins on the PM timer (port exits) for 5 ms so the
# timer fires and its interrupt is left pending, prints 'M', then unmasks
# and spins without exits until the tick arrives. With interrupt windows
# off (a recording VM) and no timer overdue (the one-shot has fired), only
# the watchdog's kick for a waiting interrupt can deliver it.
.code16
.include "common.inc"
.globl _start
_start:
	prologue
	set_vector 0x20, tick
	pic_init
	mov $0x30, %al          # channel 0, lobyte/hibyte, mode 0
	out %al, $0x43
	mov $0xa9, %al          # 1193 = 0x04a9
	out %al, $0x40
	mov $0x04, %al
	out %al, $0x40
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
