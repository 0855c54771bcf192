package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Config is what the kernel command line asks of the guest.
type Config struct {
	// Workload names the entry of the workload registry to run
	// (ftvm.workload=NAME, default "none").
	Workload string
	// Seconds is how long time-based workloads run (ftvm.seconds=N).
	Seconds int
	// Params holds every ftvm.* parameter, for workloads with their own options.
	Params map[string]string
}

// SplitCmdline splits a kernel command line into parameters the way the
// kernel does: on spaces, except inside double quotes, which are removed
// (param="a b" is one parameter with value a b).
func SplitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// ParseCmdline extracts the ftvm.* parameters. Other parameters belong to
// the kernel and are ignored. A later ftvm.X overrides an earlier one, as
// for kernel parameters, so a caller can append to the default cmdline.
func ParseCmdline(cmdline string, known map[string]Workload) (Config, error) {
	cfg := Config{Workload: "none", Params: map[string]string{}}
	for _, p := range SplitCmdline(cmdline) {
		key, val, _ := strings.Cut(p, "=")
		if name, ok := strings.CutPrefix(key, "ftvm."); ok && name != "" {
			cfg.Params[name] = val
		}
	}
	var errs []error
	if w, ok := cfg.Params["workload"]; ok {
		cfg.Workload = w
	}
	if _, ok := known[cfg.Workload]; !ok {
		errs = append(errs, fmt.Errorf("ftvm.workload=%q is not a known workload (have: %s)", cfg.Workload, strings.Join(workloadNames(known), ", ")))
	}
	if s, ok := cfg.Params["seconds"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("ftvm.seconds=%q is not a non-negative integer", s))
		}
		cfg.Seconds = n
	}
	return cfg, errors.Join(errs...)
}
