# ftvm: common tasks. Every target installs what it needs first.
.PHONY: setup demo demo-raft demo-mapreduce test fuzz soak bench bench-all ftctl clean

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

# The FT demos on the distributed guest workloads, each a nested-host Go
# test that boots its guests, prints a table of the kill with ftvm beside
# the same kill without, and fails if a check does not hold (see
# images/workloads/guests). Each boots four guests, one a pair: about 4.5
# minutes each in the nested host; make test runs both at their minimum
# work. DEMO_SCALE multiplies it.
# Raft: three raftkv replicas, the leader an ftvm pair, under three
# clients; its primary is killed (no election, no client error), then the
# leader's VM dies unprotected (an election, the clients' downtime).
DEMO_SCALE ?= 1
demo-raft: setup
	FTVM_DEMOS=1 FTVM_DEMO_SCALE=$(DEMO_SCALE) go test -count=1 -v -timeout 60m -run '^TestRaftDemo$$' ./images/workloads/guests/

# MapReduce: a word count over a coordinator and two workers, worker 0 an
# ftvm pair killed mid-job (no task re-executed), then the same job with
# worker 0 a plain VM that dies (the timeout, the re-execution, the extra
# time). Both outputs must equal the sequential run.
demo-mapreduce: setup
	FTVM_DEMOS=1 FTVM_DEMO_SCALE=$(DEMO_SCALE) go test -count=1 -v -timeout 60m -run '^TestMapReduceDemo$$' ./images/workloads/guests/

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

# The performance suite (BenchmarkSuite: a CPU-bound, the kv and a
# disk-heavy guest, each alone and as a pair; about 40 minutes in the nested
# host), written to BENCHMARKS.md and docs/bench/*.png from its one run.
bench: setup
	scripts/bench.sh

# Every benchmark, each reporting ratios from one run (hours).
bench-all: setup
	go test -run '^$$' -bench . -benchtime 1x -timeout 0 ./replication/ ./logchannel/ ./storage/server/

clean:
	rm -rf out
