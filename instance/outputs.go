package instance

import (
	"io"

	"github.com/ftvm/ftvm/hypervisor/virtio"
)

// OutputWrappers put something in front of where the guest's outputs go,
// as Config.WrapTransmit and Config.WrapDisk do at creation: each is handed
// the current destination and returns the new one. Nil ones leave theirs
// alone.
type OutputWrappers struct {
	Transmit func(send func(frame []byte)) func(frame []byte)
	Disk     func(index int, d virtio.BlockBackend) virtio.BlockBackend
	Console  func(w io.Writer) io.Writer
}

// WrapOutputs sends the guest's frames, disk writes and console bytes
// through w from now on: how a VM running live becomes a primary holding
// its outputs under the output rule. Call it on the vCPU goroutine between
// exits (inside vm.VM.AtExit), where no output is half made; the devices
// call their destinations only there.
func (i *Instance) WrapOutputs(w OutputWrappers) {
	if w.Transmit != nil && i.transmit != nil {
		i.transmit = w.Transmit(i.transmit)
	}
	if w.Disk != nil {
		for n, d := range i.outDisks {
			d.BlockBackend = w.Disk(n, d.BlockBackend)
		}
	}
	if w.Console != nil && i.console != nil {
		i.console.Writer = w.Console(i.console.Writer)
	}
}

// Config is the configuration the instance was created with.
func (i *Instance) Config() Config { return i.cfg }

// switchDisk is a disk backend whose destination WrapOutputs may change
// between exits.
type switchDisk struct {
	virtio.BlockBackend
}

// switchWriter is the console's destination, changed the same way.
type switchWriter struct {
	io.Writer
}
