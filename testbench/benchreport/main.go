package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func main() {
	in := flag.String("in", "", "the benchmark suite's log (go test -bench BenchmarkSuite output)")
	md := flag.String("md", "BENCHMARKS.md", "the Markdown file to write")
	plots := flag.String("plots", "docs/bench", "the directory for the PNG plots")
	flag.Parse()
	if err := run(*in, *md, *plots); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(in, md, plotDir string) error {
	if in == "" {
		return fmt.Errorf("-in is required: the log of go test -run '^$' -bench BenchmarkSuite -benchtime 1x ./replication/")
	}
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	results, err := Parse(f)
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	if err := os.MkdirAll(plotDir, 0o755); err != nil {
		return err
	}
	if err := Plots(results, plotDir); err != nil {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(md), plotDir)
	if err != nil {
		rel = plotDir
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := Markdown(&buf, results, fi.ModTime().UTC().Format(time.DateOnly), filepath.ToSlash(rel)); err != nil {
		return err
	}
	// Written whole or not at all: a failed run keeps the last report.
	tmp := md + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, md); err != nil {
		return err
	}
	fmt.Printf("wrote %s and %s/{speed,log,kicks}.png from %d cases\n", md, plotDir, len(results))
	return nil
}
