package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// diskWait bounds the wait for an explicitly named disk's device node;
// virtio-blk probes before /init runs, so this only covers a slow probe.
const diskWait = 10 * time.Second

// mountDisk mounts dc.Device on dc.MountPoint. mounted is false with a nil
// error when there is nothing to mount: no device configured, or the
// default device does not exist (a VM without a disk).
func mountDisk(ctx context.Context, dc DiskConfig) (mounted bool, err error) {
	if dc.Device == "" {
		return false, nil
	}
	if err := waitDevice(ctx, dc.Device, dc.Explicit); err != nil {
		if !dc.Explicit {
			return false, nil
		}
		return false, err
	}
	if err := os.MkdirAll(dc.MountPoint, 0o755); err != nil {
		return false, fmt.Errorf("disk: create mount point: %w", err)
	}
	if err := unix.Mount(dc.Device, dc.MountPoint, dc.FSType, 0, ""); err != nil {
		return false, fmt.Errorf("disk: mount %s on %s as %s: %w", dc.Device, dc.MountPoint, dc.FSType, err)
	}
	return true, nil
}

// waitDevice waits for the device node if the disk was named explicitly;
// the default disk is looked for once.
func waitDevice(ctx context.Context, dev string, wait bool) error {
	deadline := time.Now().Add(diskWait)
	for {
		fi, err := os.Stat(dev)
		if err == nil {
			if fi.Mode()&os.ModeDevice == 0 {
				return fmt.Errorf("disk: %s is not a device", dev)
			}
			return nil
		}
		if !wait || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("disk: %s did not appear within %s; a virtio-blk device needs virtio_mmio.device=<size>@<addr>:<irq> on the kernel command line: %w", dev, diskWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unmountDisk syncs and unmounts the disk so that everything written, not
// only what workloads fsync'd, is on the device before power-off. The
// workload process has exited, so nothing should hold the mount busy;
// a few retries cover files whose last close is still in flight.
func unmountDisk(mountPoint string) error {
	unix.Sync()
	var err error
	for range 10 {
		if err = unix.Unmount(mountPoint, 0); err == nil || !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("disk: unmount %s: %w", mountPoint, err)
	}
	return nil
}
