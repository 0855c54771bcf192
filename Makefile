# ftvm: common tasks. Every target installs what it needs first.
.PHONY: setup demo test ftctl clean

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

clean:
	rm -rf out
