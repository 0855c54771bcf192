package main

// haveRDTSC is true where rdtsc and rdtscp are the real instructions.
const haveRDTSC = true

// rdtsc executes RDTSC and returns EDX:EAX. In the ftvm guest, whose CPU
// has no TSC, the kernel makes it fault and answers with CLOCK_MONOTONIC
// in nanoseconds (images/kernel/patches/0002-…).
func rdtsc() uint64

// rdtscp executes RDTSCP and returns EDX:EAX and ECX. Where RDTSCP is
// hidden the CPU may raise #UD instead, which kills the process (SIGILL):
// call it only in a process that may die.
func rdtscp() (tsc uint64, aux uint32)
