package main

import "github.com/spf13/cobra"

func newTestbenchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "testbench",
		Short: "Test harnesses: a KVM host for guest code, fault injection, benchmarks",
	}
	return cmd
}
