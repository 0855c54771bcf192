// Command ftctl drives ftvm: it builds guest images, runs VMs and
// fault-tolerant primary/backup pairs, and runs the test bench. Every
// subcommand is a thin layer over a package; the logic lives there.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ftvm/ftvm/testbench/kvmhost"
)

func main() {
	// Inside a nested test host, ftctl itself serves as the host's agent.
	if kvmhost.IsAgent() {
		os.Exit(kvmhost.AgentMain())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ftctl:", err)
		os.Exit(exitCode(err))
	}
}
