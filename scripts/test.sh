#!/usr/bin/env bash
# The test suite: formatting, vet, and every test with the race detector.
# Tests that need KVM run inside a nested KVM host (testbench/kvmhost) when
# this machine cannot run guest ring-0 code at speed; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
go mod download

unformatted=$(gofmt -l $(git ls-files '*.go'))
if [[ -n $unformatted ]]; then
  echo "gofmt would change:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...
# Build the guest image first, in the open: the first kernel build takes
# ~10 minutes and go test would hide its progress until the package ends.
# The tests find the kernel in the cache afterwards.
go run ./cmd/ftctl image build --out out/image
# As root (how CI runs it) every test must run: a test that would skip for
# want of root, a tool or a device fails instead (internal/testenv).
if [[ $(id -u) == 0 ]]; then
  export FTVM_TEST_NO_SKIP=1
fi
# Two streams side by side, each with one nested host at a time: a nested
# host's software CPU keeps one core busy, and on a two-core machine a
# single stream leaves the other core idle (the suite took ~50 minutes that
# way here, 80 on CI). Stream A is most of ./replication, the longest
# package (~35 minutes), and the Raft FT demo; stream B is the fuzz tests,
# every other package, the rest of ./replication and the MapReduce FT demo.
# Within a stream, -p 1: two nested hosts on one core only slow each other
# down and time out.
moved='^TestKillPrimaryBackupGoesLive$' # ./replication's tests stream B runs
gotest=(go test -race -count=1 -p 1 -timeout 60m)
# The FT demos (make demo-raft, make demo-mapreduce) at their minimum work,
# without the race detector: each tests the whole system end to end (the
# packages under them ran with it), boots four guests, one of them a pair,
# and takes about 4.5 minutes here. One in each stream.
demo() {
  FTVM_DEMOS=1 go test -count=1 -p 1 -timeout 30m -v -run "^$1\$" ./images/workloads/guests/
}
stream_a() {
  local rc=0
  "${gotest[@]}" -skip "$moved" ./replication/ || rc=1
  demo TestRaftDemo || rc=1
  return "$rc"
}
# A failing step does not stop the stream: every failure shows in one run.
stream_b() {
  local rc=0
  scripts/fuzz.sh 5 || rc=1 # every fuzz test in turn, 5 s each: 33 of them at 10 s took over 6 min here
  "${gotest[@]}" $(go list ./... | grep -v '/replication$') || rc=1
  "${gotest[@]}" -run "$moved" ./replication/ || rc=1
  demo TestMapReduceDemo || rc=1
  return "$rc"
}
rm -f /tmp/ftvm-test-a.log /tmp/ftvm-test-b.log
start=$SECONDS
# Each line says its stream; each stream's whole output is also kept.
(stream_a 2>&1 | tee /tmp/ftvm-test-a.log | sed -u 's/^/[A] /') &
a=$!
(stream_b 2>&1 | tee /tmp/ftvm-test-b.log | sed -u 's/^/[B] /') &
b=$!
status=0
wait "$a" || status=1
echo "test: stream A (./replication) ended after $((SECONDS - start))s, $( ((status == 0)) && echo passed || echo FAILED)"
wait "$b" || { echo "test: stream B FAILED"; status=1; }
echo "test: both streams ended after $((SECONDS - start))s"
cat /tmp/ftvm-test-a.log /tmp/ftvm-test-b.log >/tmp/ftvm-test.log
if ((status != 0)); then
  # Each failing test with what it printed (the indented lines after its
  # --- FAIL line): CI keeps only the end of the output.
  echo "test: FAILED; the failing lines:" >&2
  grep -E -A12 '^\s*--- FAIL' /tmp/ftvm-test.log | cut -c1-300 >&2 || true
  grep -E '^(FAIL|fuzz: FAIL|panic:)' /tmp/ftvm-test.log >&2 || true
fi
exit "$status"
