#!/usr/bin/env bash
# The main job, as far as ftvm goes today: build the guest image (kernel
# from Debian's linux-source, cached; ~8 minutes the first time), then boot
# it with `ftctl run` on a KVM host that executes guest ring-0 code at speed
# (a nested host under QEMU when this machine has none). The guest's Go /init
# prints its ready line (with the clocksource it runs on) and powers off.
# The kill-the-primary demo replaces this once replication lands.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o out/ftctl ./cmd/ftctl

echo "== ftctl image build"
out/ftctl image build --out out/image
out/ftctl image inspect out/image

echo "== ftctl run --image out/image   ($(out/ftctl testbench kvmhost where))"
out/ftctl testbench kvmhost run --file "$PWD/out/image" -- \
  "$PWD/out/ftctl" run --image "$PWD/out/image" --stats
echo "== demo finished: the guest booted, printed its ready line and powered off"
