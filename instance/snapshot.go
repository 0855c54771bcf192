package instance

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/snapshot"
)

// Identity is the machine cfg describes, as a snapshot names it: the same
// things a pair's start header compares (boot file hashes, the final
// command line, memory, NIC and MAC, disks, the guest's CPUID table).
func Identity(cfg Config) (snapshot.Identity, error) {
	boot, err := ResolveBoot(cfg)
	if err != nil {
		return snapshot.Identity{}, err
	}
	return identity(cfg, boot)
}

// identity is Identity with cfg's boot files already resolved.
func identity(cfg Config, boot Boot) (snapshot.Identity, error) {
	var err error
	if boot.KernelSHA256 == "" {
		if boot.KernelSHA256, err = fileSHA256(boot.Kernel); err != nil {
			return snapshot.Identity{}, err
		}
	}
	if boot.InitrdSHA256 == "" && boot.Initrd != "" {
		if boot.InitrdSHA256, err = fileSHA256(boot.Initrd); err != nil {
			return snapshot.Identity{}, err
		}
	}
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = 256 // vm's default, spelled out so it compares
	}
	cpuid, err := vm.GuestCPUID("")
	if err != nil {
		return snapshot.Identity{}, fmt.Errorf("the guest's CPUID: %w", err)
	}
	id := snapshot.Identity{
		MemoryMiB: mem, KernelSHA256: boot.KernelSHA256, InitrdSHA256: boot.InitrdSHA256,
		Cmdline: boot.Cmdline, NIC: cfg.NetSocket != "", Disks: cfg.Disks, CPUID: cpuid,
	}
	if id.NIC {
		id.MAC = strings.ToLower(cfg.MAC)
		if id.MAC == "" {
			id.MAC = DefaultMAC
		}
	}
	return id, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Identity is the instance's machine as a snapshot names it (the package
// function Identity of its Config), worked out once: Snapshot needs it, and
// it reads the boot files, so a caller about to snapshot a running guest
// asks for it first and the snapshot lands close to when it was asked for.
func (i *Instance) Identity() (*snapshot.Identity, error) {
	if i.id == nil {
		// New resolved (and, for an image, verified) the boot files.
		id, err := identity(i.cfg, i.boot)
		if err != nil {
			return nil, err
		}
		i.id = &id
	}
	return i.id, nil
}

// Snapshot writes a full snapshot of the instance to w at the VM's next
// exit (see vm.VM.AtExit) and returns its Sum; the guest pauses while it is
// written. If stop is not nil it is called at that same exit, right after
// the snapshot: pass the cancel function of Run's context, and the guest
// runs no further, so its disks hold nothing the snapshot's guest did not
// write (a machine restored on the same disks must not find writes it
// never made). Call it from any goroutine but the vCPU's.
func (i *Instance) Snapshot(ctx context.Context, w io.Writer, stop context.CancelFunc) (snapshot.Sum, error) {
	id, err := i.Identity()
	if err != nil {
		return snapshot.Sum{}, fmt.Errorf("take snapshot: %w", err)
	}
	var sum snapshot.Sum
	err = i.VM.AtExit(ctx, func() error {
		var err error
		sum, err = snapshot.Take(w, i.VM, id)
		if stop != nil {
			stop()
		}
		return err
	})
	return sum, err
}

// Restore makes the instance, created and not yet run, go on from the full
// snapshot r instead of booting. A snapshot of another machine is refused
// before anything is loaded, naming the difference. On a NIC it announces
// the guest's MAC on the switch, as after a failover: the switch may still
// know it at the port of the VM the snapshot was taken of. On an error the
// instance must not run.
func (i *Instance) Restore(r io.Reader) (snapshot.Sum, error) {
	id, err := i.Identity()
	if err != nil {
		return snapshot.Sum{}, fmt.Errorf("restore snapshot: %w", err)
	}
	sum, err := snapshot.Restore(i.VM, id, r)
	if err != nil {
		return snapshot.Sum{}, err
	}
	if i.port != nil {
		hw, err := parseMAC(i.cfg.MAC)
		if err != nil {
			return snapshot.Sum{}, err
		}
		announce(i.port, hw)
	}
	return sum, nil
}
