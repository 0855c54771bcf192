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

# Long runs that CI does not make: SOAK_TRIALS kill-the-primary trials and
# a third as many partition trials, each on a fresh pair and checked as in
# CI (no client error, linearizable history, every acknowledged write read
# back and on the disk, one side live, the generation up), with the tally
# and a histogram of the clients' pauses; then the failover benchmark over
# 20 kills and 10 silences beside a restart without ftvm; and the
# Raft/KV/MapReduce host tests in their long variants (FTVM_SOAK).
SOAK_TRIALS ?= 100
soak: setup
	FTVM_KILL_TRIALS=$(SOAK_TRIALS) FTVM_PARTITION_TRIALS=$$(( $(SOAK_TRIALS) / 3 )) go test -count=1 -timeout 0 -v \
		-run '^(TestKillPrimaryBackupGoesLive|TestPartitionLeavesExactlyOneSide)$$' ./replication/
	go test -run '^$$' -bench 'BenchmarkFailoverKill$$' -benchtime 20x -timeout 0 -v ./replication/
	go test -run '^$$' -bench 'BenchmarkFailoverSilence$$' -benchtime 10x -timeout 0 -v ./replication/
	FTVM_SOAK=1 go test -race -count=1 -timeout 60m ./images/workloads/...

# The performance benchmarks, each reporting ratios from one run.
bench: setup
	go test -run '^$$' -bench . -benchtime 1x -timeout 0 ./replication/ ./logchannel/ ./storage/server/

clean:
	rm -rf out
