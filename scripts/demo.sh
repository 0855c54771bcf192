#!/usr/bin/env bash
# The main job, as far as ftvm goes today: build the guest image (kernel
# from Debian's linux-source, cached; ~8 minutes the first time), then run
# the KVM smoke tests on a KVM host that executes guest ring-0 code at speed
# (a nested host under QEMU when this machine has none).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x out/ftctl ]] || go build -o out/ftctl ./cmd/ftctl

echo "== ftctl image build"
out/ftctl image build --out out/image
out/ftctl image inspect out/image

echo "== KVM smoke run: $(out/ftctl testbench kvmhost where)"
go test -c -o out/kvm.test ./hypervisor/kvm
out/ftctl testbench kvmhost run -- "$PWD/out/kvm.test" -test.v -test.count=1 -test.run '^(TestRing0Loop|TestPIO)$'
echo "== demo finished"
