# ftvm: common tasks. Every target installs what it needs first.
.PHONY: setup demo test fuzz soak bench ftctl clean

setup:
	scripts/setup.sh

ftctl: setup
	go build -o out/ftctl ./cmd/ftctl

# The main job (for now): build the guest image, then run a primary/backup
# pair of the kv guest under client traffic on a KVM host (nested under QEMU
# if this machine has no usable KVM) and kill -9 the primary: the backup goes
# live, the clients see a pause, not an error, and their history checks
# linearizable.
demo: ftctl
	scripts/demo.sh

test:
	scripts/test.sh

# Every fuzz test for FUZZTIME seconds each, one after another (the test
# target gives each 5 s). A failing input lands in its package's
# testdata/fuzz/ and the run stops there.
FUZZTIME ?= 60
fuzz: setup
	scripts/fuzz.sh $(FUZZTIME)

# Long runs that CI does not make: SOAK_TRIALS kill-the-primary failovers
# (each a fresh pair; prints every trial's timeline and the pause quantiles
# beside a restart without ftvm), and the Raft/KV/MapReduce host tests in
# their long variants (FTVM_SOAK).
SOAK_TRIALS ?= 100
soak: setup
	go test -run '^$$' -bench 'BenchmarkFailoverKill$$' -benchtime $(SOAK_TRIALS)x -timeout 0 -v ./replication/
	FTVM_SOAK=1 go test -race -count=1 -timeout 60m ./images/workloads/...

# The performance benchmarks, each reporting ratios from one run.
bench: setup
	go test -run '^$$' -bench . -benchtime 1x -timeout 0 ./replication/ ./logchannel/ ./storage/server/

clean:
	rm -rf out
