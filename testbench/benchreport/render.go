package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// The issue-13 targets the report checks each run against.
const (
	targetSpeed       = 0.8  // disk-heavy guest: alone/pair time
	targetCPULogMbps  = 1.0  // CPU-bound guest's log
	targetFallbackMax = 0.05 // kicks that fall back to a checkpoint
	vmwareLoadedMbps  = 18   // VMware FT's loaded log range tops out here
)

// Markdown writes BENCHMARKS.md for results: the table, the kv round
// trips, where kicks stopped the guest, and the targets with this run's
// verdict. plotDir is where the plots are, relative to the file.
func Markdown(w io.Writer, results []Result, when, plotDir string) error {
	var b strings.Builder
	b.WriteString("# Benchmarks\n\n")
	b.WriteString("Written by `make bench` from one run of the replication suite (`BenchmarkSuite`,\n")
	b.WriteString("`replication/suite_bench_test.go`); every ratio below comes from that one run. Do not edit by\n")
	b.WriteString("hand: run `make bench` again.\n\n")
	fmt.Fprintf(&b, "- Run: %s\n", when)
	for _, h := range hosts(results) {
		fmt.Fprintf(&b, "- Host: %s\n", h)
	}
	b.WriteString("- Each case does fixed work, first on the guest alone, then on the same guest as the primary of a\n")
	b.WriteString("  pair whose backup runs on the same host. *cpu*: SHA-256 rounds, no I/O. *kv*: the kv server\n")
	b.WriteString("  under the standard client load (300 ECHO round trips, 40 bulk 16 KiB ECHOs, 100 fsync'd PUTs).\n")
	b.WriteString("  *db*: fsync'd 4 KiB transactions with hashing between them and a table checkpoint every 100.\n\n")

	b.WriteString("## The pair against the guest alone\n\n")
	b.WriteString("| case | alone (runs before and after) | pair | speed (alone/pair) | log Mbit/s | inputs | checkpoints | log / VMware's 18 | kicks | found by the backup | user / kernel | backup lag p50 / p99 | frame hold p50 | log RTT |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %.1f s%s | %.1f s | **%.2f** | %.3f | %.3f | %.3f | %.3f | %d | %d (%s) | %d / %d | %.0f / %.0f ms | %.2f ms | %.2f ms |\n",
			r.Case, r.SoloSeconds, runs(r.SoloRuns), r.PairSeconds, r.Speed, r.LogMbps, r.InputMbps, r.CheckpointMbps, r.LogMbps/vmwareLoadedMbps,
			r.Kicks, r.KicksFound, percent(r.KicksFound, r.Kicks), r.KicksUser, r.KicksKernel, r.LagP50ms, r.LagP99ms, r.FrameHoldP50ms, r.RTTms)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "![speed: guest alone time over pair time](%s/speed.png)\n", plotDir)
	fmt.Fprintf(&b, "![log bandwidth: inputs and checkpoints](%s/log.png)\n\n", plotDir)

	for _, r := range results {
		if r.SoloEchoP50ms == 0 && r.PairEchoP50ms == 0 {
			continue
		}
		fmt.Fprintf(&b, "## Round trips through the output rule (%s)\n\n", r.Case)
		b.WriteString("| ECHO round trip | alone | pair | added |\n|---|---|---|---|\n")
		fmt.Fprintf(&b, "| p50 | %.2f ms | %.2f ms | %.2f ms |\n", r.SoloEchoP50ms, r.PairEchoP50ms, r.PairEchoP50ms-r.SoloEchoP50ms)
		fmt.Fprintf(&b, "| p99 | %.2f ms | %.2f ms | %.2f ms |\n\n", r.SoloEchoP99ms, r.PairEchoP99ms, r.PairEchoP99ms-r.SoloEchoP99ms)
		fmt.Fprintf(&b, "The log channel's round trip was %.2f ms; a frame was held %.2f ms (p50) for the backup's acknowledgement.\n\n", r.RTTms, r.FrameHoldP50ms)
	}

	b.WriteString("## Where kicks stop the guest\n\n")
	b.WriteString("A kick is the watchdog stopping a guest that ran too long without an exit while a timer was\n")
	b.WriteString("overdue; the backup cannot find that point, so each one ships a checkpoint. By the guest's mode\n")
	b.WriteString("at the kick, and the kernel functions it stopped in most (from the image's `vmlinux`):\n\n")
	fmt.Fprintf(&b, "![kicks by mode](%s/kicks.png)\n\n", plotDir)
	b.WriteString("| case | pair boot | kicks in the boot (user) | kicks in the work (user) | exits/s in the work | port exits (boot and work) |\n|---|---|---|---|---|---|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %.1f s | %d (%s) | %d (%s) | %.0f | %s |\n", r.Case, r.BootSeconds, r.BootKicks, percent(r.BootKicksUser, r.BootKicks),
			r.Kicks, percent(r.KicksUser, r.Kicks), r.ExitsPerSec, strings.Join(r.TopPorts, " "))
	}
	b.WriteString("\nThe kernel functions kicks stopped in most:\n\n")
	for _, r := range results {
		fmt.Fprintf(&b, "- **%s**, boot: %s; work: %s.\n", r.Case, symbols(r.BootTopKernel), symbols(r.TopKernel))
	}
	b.WriteString("\n## Targets (issue 13), this run\n\n")
	b.WriteString("| target | this run | met |\n|---|---|---|\n")
	for _, r := range results {
		switch r.Case {
		case "db":
			fmt.Fprintf(&b, "| disk-heavy guest, speed >= %.1f (primary and backup on separate vCPUs) | %.2f, one shared vCPU | %s |\n", targetSpeed, r.Speed, verdict(r.Speed >= targetSpeed))
		case "cpu":
			fmt.Fprintf(&b, "| CPU-bound guest, log < %.0f Mbit/s | %.3f Mbit/s | %s |\n", targetCPULogMbps, r.LogMbps, verdict(r.LogMbps < targetCPULogMbps))
		}
		if r.Case == "db" || r.Case == "cpu" {
			fallback := 0.0
			if r.Kicks > 0 {
				fallback = float64(r.Kicks-r.KicksFound) / float64(r.Kicks)
			}
			if r.Kicks == 0 {
				fmt.Fprintf(&b, "| %s: at most %.0f%% of kicks fall back to a checkpoint | no kicks in the work | yes |\n", r.Case, targetFallbackMax*100)
			} else {
				fmt.Fprintf(&b, "| %s: at most %.0f%% of kicks fall back to a checkpoint | %.0f%% of %d | %s |\n", r.Case, targetFallbackMax*100, fallback*100, r.Kicks, verdict(fallback <= targetFallbackMax))
			}
		}
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func hosts(results []Result) []string {
	var hs []string
	for _, r := range results {
		if r.Host != "" && !slices.Contains(hs, r.Host) {
			hs = append(hs, r.Host)
		}
	}
	return hs
}

// runs lists the solo runs a mean came from, " (a, b)", if there were
// several.
func runs(secs []float64) string {
	if len(secs) < 2 {
		return ""
	}
	parts := make([]string, len(secs))
	for i, v := range secs {
		parts[i] = fmt.Sprintf("%.1f", v)
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func symbols(ss []Symbol) string {
	if len(ss) == 0 {
		return "none"
	}
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = fmt.Sprintf("`%s` %d", s.Name, s.Kicks)
	}
	return strings.Join(names, ", ")
}

func percent(part, whole uint64) string {
	if whole == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", float64(part)*100/float64(whole))
}

func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}
