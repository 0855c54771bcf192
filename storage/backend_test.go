package storage

import "github.com/ftvm/ftvm/hypervisor/virtio"

// A Disk is what the VMM hands to virtio-blk. Checked here, in a test, so
// that storage itself does not depend on the hypervisor packages.
var (
	_ virtio.BlockBackend    = (*Disk)(nil)
	_ virtio.ReadOnlyBackend = (*Disk)(nil)
)
