# ftvm: common tasks. Every target installs what it needs first.
.PHONY: setup demo test ftctl clean

setup:
	scripts/setup.sh

ftctl: setup
	go build -o out/ftctl ./cmd/ftctl

# The main job (for now): build the guest image, then run the KVM smoke
# tests on a KVM host (nested under QEMU if this machine has no usable KVM).
demo: ftctl
	scripts/demo.sh

test:
	scripts/test.sh

clean:
	rm -rf out
