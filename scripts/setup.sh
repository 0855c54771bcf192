#!/usr/bin/env bash
# Sets up a Debian 12 machine for ftvm: the Debian packages the build, the
# image builder and the nested KVM host need, and a Go toolchain at least as
# new as go.mod asks for. Idempotent: a second run changes nothing and takes
# about a second. Must run as root (it installs packages).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential   # cgo (go test -race) and the guest kernel build
  bc flex bison libelf-dev cpio xz-utils  # the guest kernel build
  linux-source-6.1  # guest kernel source (images/kernel)
  qemu-system-x86   # the nested KVM host (testbench/kvmhost)
  busybox-static    # the nested host's userland
  e2fsprogs         # mkfs.ext4 for disk images
  iproute2          # network-namespace tests (ip)
  ca-certificates git
)

missing=()
for p in "${packages[@]}"; do
  [[ $p == \#* ]] && continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

# Go: go.mod's "go" line is the minimum. Debian 12 ships Go 1.19, which
# cannot switch toolchains by itself but can fetch the official toolchain
# module (golang.org/toolchain) from the Go module proxy, as newer Go does.
want=$(awk '$1 == "go" {print $2; exit}' go.mod)
version_ok() { # $1: a go binary
  local have
  have=$("$1" env GOVERSION 2>/dev/null | sed 's/^go//') || return 1
  [[ -n $have ]] && [[ $(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1) == "$want" ]]
}
for candidate in "$(command -v go || true)" /usr/local/go/bin/go; do
  if [[ -x $candidate ]] && GOTOOLCHAIN=local version_ok "$candidate"; then
    echo "setup: using $("$candidate" version)"
    exit 0
  fi
done
if [[ $(id -u) != 0 ]]; then
  echo "setup: Go $want or newer is needed (found: $(go version 2>/dev/null || echo none)); run as root to install it" >&2
  exit 1
fi
if ! command -v go >/dev/null && [[ ! -x /usr/lib/go-1.19/bin/go ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends golang-1.19-go
fi
bootstrap=$(command -v go || echo /usr/lib/go-1.19/bin/go)
root=/usr/local/lib/ftvm-go
mod="golang.org/toolchain@v0.0.1-go${want}.linux-amd64"
echo "setup: fetching Go ${want} (${mod}) through the Go module proxy with $("$bootstrap" version)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dir=$(cd "$tmp" && GOTOOLCHAIN=local GOFLAGS=-modcacherw GOPATH="$root" GOMODCACHE="$root/mod" \
  "$bootstrap" mod download -json "$mod" | awk -F'"' '$2 == "Dir" {print $4}')
[[ -d $dir ]] || { echo "setup: download of $mod failed" >&2; exit 1; }
# Module zips carry no file modes; the go command restores them the same way.
chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/*
ln -sf "$dir/bin/go" /usr/local/bin/go
ln -sf "$dir/bin/gofmt" /usr/local/bin/gofmt
echo "setup: installed $(/usr/local/bin/go version) as /usr/local/bin/go"
