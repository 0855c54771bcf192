package replication

import (
	"context"

	"github.com/ftvm/ftvm/hypervisor/virtio"
)

// gatedDisk is a primary's block backend: writes and flushes are outputs
// held by the gate (the guest is told they are done at once; they reach
// the disk once the backup has the log), reads see the disk with the held
// writes on top.
type gatedDisk struct {
	ctx   context.Context
	disk  virtio.BlockBackend
	index int
	gate  *Gate
	noted func() // tells the recorder this exit produced an output
}

func (d *gatedDisk) ReadAt(p []byte, off int64) (int, error) {
	// Snapshot the held writes before reading: a write released meanwhile
	// is on the disk by the time it leaves the held list.
	held := d.gate.heldWrites(d.index)
	n, err := d.disk.ReadAt(p, off)
	if err != nil {
		return n, err
	}
	overlay(p, off, held)
	return n, nil
}

func (d *gatedDisk) WriteAt(p []byte, off int64) (int, error) {
	d.gate.add(d.ctx, output{kind: OutputDiskWrite, disk: d.index, off: off, data: append([]byte(nil), p...)})
	d.noted()
	return len(p), nil
}

func (d *gatedDisk) Flush() error {
	d.gate.add(d.ctx, output{kind: OutputDiskFlush, disk: d.index})
	d.noted()
	return nil
}

func (d *gatedDisk) Size() int64 { return d.disk.Size() }
func (d *gatedDisk) ID() string  { return d.disk.ID() }
