//go:build !amd64

package main

const haveRDTSC = false

func rdtsc() uint64                    { return 0 }
func rdtscp() (tsc uint64, aux uint32) { return 0, 0 }
