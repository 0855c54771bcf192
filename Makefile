# ftvm: common tasks. Every target installs what it needs first.
.PHONY: setup demo test fuzz ftctl clean

setup:
	scripts/setup.sh

ftctl: setup
	go build -o out/ftctl ./cmd/ftctl

# The main job (for now): build the guest image, then run a primary/backup
# pair of the kv guest under client traffic on a KVM host (nested under QEMU
# if this machine has no usable KVM); the backup must match every digest.
# It becomes the kill-the-primary demo once failover lands.
demo: ftctl
	scripts/demo.sh

test:
	scripts/test.sh

# Every fuzz test for FUZZTIME seconds each, one after another (the test
# target gives each 10 s). A failing input lands in its package's
# testdata/fuzz/ and the run stops there.
FUZZTIME ?= 60
fuzz: setup
	scripts/fuzz.sh $(FUZZTIME)

clean:
	rm -rf out
