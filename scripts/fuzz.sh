#!/usr/bin/env bash
# Runs every fuzz test in the repository, one at a time, for SECONDS each
# (default 10): scripts/fuzz.sh [SECONDS [PATTERN]]; PATTERN (an extended
# regexp over "package-dir FuzzName") picks some. Stops at the first failure and
# prints the failing input's path; go test has written it under the
# package's testdata/fuzz/FuzzName/, where it becomes a regression input
# of the plain test run once committed.
#
# FUZZMINIMIZETIME (default 1s) bounds each minimization. go test's default
# (60s) also applies to every input that adds coverage, and while a worker
# minimizes a large one (a checkpoint page, a kernel image) fuzzing stalls:
# a short budget would be spent minimizing instead of fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
pattern=${2:-.}
minimize=${FUZZMINIMIZETIME:-1s}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS [PATTERN]]  (seconds per fuzz test, a positive integer; got '$seconds')" >&2
  exit 2
fi

# "dir name" for every func FuzzX in a test file git tracks (or would).
mapfile -t targets < <(
  git ls-files --cached --others --exclude-standard -- '*_test.go' |
    xargs grep -H '^func Fuzz[A-Za-z0-9_]*(' |
    sed -E 's#^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#\1 \2#; s#^[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#. \1#' |
    sort -u | { grep -E -- "$pattern" || true; }
)
if ((${#targets[@]} == 0)); then
  echo "fuzz: no fuzz tests found (pattern '$pattern')" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} fuzz tests, ${seconds}s each"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$SECONDS
for t in "${targets[@]}"; do
  read -r dir name <<<"$t"
  t0=$SECONDS
  if go test -run '^$' -fuzz "^${name}\$" -fuzztime "${seconds}s" -fuzzminimizetime "$minimize" "./$dir" >"$log" 2>&1; then
    echo "fuzz: ok   ./$dir $name ($((SECONDS - t0))s)"
    continue
  fi
  # Go before 1.27 may end a fuzztime run that found nothing with a bare
  # "context deadline exceeded" (its coordinator races its own deadline,
  # go.dev/issue/75804). That alone, with no input written and nothing
  # panicking, is the budget running out, not a finding.
  if grep -qx '    context deadline exceeded' "$log" &&
    ! grep -qE 'Failing input written|panic:|failure while testing seed corpus|hung or terminated' "$log"; then
    echo "fuzz: ok   ./$dir $name ($((SECONDS - t0))s; go reported a bare deadline at the end, go.dev/issue/75804)"
    continue
  fi
  cat "$log"
  # A new failure: "Failing input written to testdata/fuzz/FuzzX/ID"; a
  # committed input failing again: "failure while testing seed corpus
  # entry: FuzzX/ID".
  input=$(sed -nE 's#.*Failing input written to (testdata/fuzz/[^ ]+).*#\1#p' "$log" | head -n1)
  if [[ -z $input ]]; then
    entry=$(sed -nE 's#.*failure while testing seed corpus entry: ([^ ]+).*#\1#p' "$log" | head -n1)
    if [[ -n $entry && -f $dir/testdata/fuzz/$entry ]]; then
      input=testdata/fuzz/$entry
    fi
  fi
  echo >&2
  if [[ -n $input ]]; then
    echo "fuzz: FAIL ./$dir $name; failing input: $dir/$input" >&2
    echo "fuzz: re-run with: go test -run '^$name/${input##*/}\$' ./$dir" >&2
  else
    echo "fuzz: FAIL ./$dir $name (no failing input recorded: a build error, or a seed added with f.Add)" >&2
  fi
  exit 1
done
echo "fuzz: all ${#targets[@]} fuzz tests passed in $((SECONDS - start))s"
