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
scripts/fuzz.sh 5 # every fuzz test in turn, 5 s each: 33 of them at 10 s took over 6 min here
# -p 1: the nested hosts use the software CPU; packages running side by side
# on two cores only slow each other down and time out.
go test -race -count=1 -p 1 -timeout 60m ./... 2>&1 | tee /tmp/ftvm-test.log
