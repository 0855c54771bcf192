#!/usr/bin/env bash
# Runs the replication performance suite once and writes BENCHMARKS.md and
# docs/bench/*.png from it. The suite's log is kept in out/bench/suite.txt;
# a failed run leaves the last report as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out/bench
log=out/bench/suite.txt
echo "bench: running BenchmarkSuite (cpu, kv, db; each alone, then as a pair); log: $log"
if ! go test -run '^$' -bench '^BenchmarkSuite$' -benchtime 1x -timeout 120m -v ./replication/ 2>&1 | tee "$log.new"; then
  echo "bench: the suite failed; BENCHMARKS.md is unchanged (log: $log.new)" >&2
  exit 1
fi
mv "$log.new" "$log"
go run ./testbench/benchreport -in "$log" -md BENCHMARKS.md -plots docs/bench
