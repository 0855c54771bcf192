package network

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Tap is a VM's NIC on a real host: a tap device attached to a Linux bridge.
// Frames the guest sends are written to the tap (the host sees them arrive
// on the tap interface, and the bridge forwards them); frames the bridge
// sends out of the tap are read and delivered.
type Tap struct {
	*portCore
	name string
}

var _ Port = (*Tap)(nil)

// OpenTap creates the tap device name (empty: the kernel picks "tapN"), in
// the calling thread's network namespace, attaches it to the existing Linux
// bridge named bridge (empty: not attached) and brings it up.
//
// The device is not persistent: it disappears when the Tap is closed or the
// process dies, so a crashed VMM leaves nothing to clean up and its
// replacement can open the same name again. Needs CAP_NET_ADMIN.
func OpenTap(name, bridge string) (*Tap, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("open tap %q: name longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	// Look the bridge up first: a typo should not cost a tap device.
	var br netlink.Link
	if bridge != "" {
		var err error
		br, err = netlink.LinkByName(bridge)
		if err != nil {
			return nil, fmt.Errorf("open tap %q: bridge %q: %w", name, bridge, err)
		}
		if br.Type() != "bridge" {
			return nil, fmt.Errorf("open tap %q: %q is a %s device, not a bridge", name, bridge, br.Type())
		}
	}
	// Non-blocking, so that os.NewFile puts the fd in Go's poller: reads
	// then park the goroutine instead of a thread, and Close unblocks them.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open tap %q: /dev/net/tun: %w", name, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %q: %w", name, err)
	}
	// IFF_NO_PI: bare Ethernet frames, no 4-byte packet-info prefix. No
	// IFF_VNET_HDR: the device model does no offloads, so there is nothing
	// to pass.
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("open tap %q: device is in use by another process: %w", name, err)
		}
		return nil, fmt.Errorf("open tap %q: TUNSETIFF: %w", name, err)
	}
	name = ifr.Name()
	file := os.NewFile(uintptr(fd), "tap "+name)
	fail := func(err error) (*Tap, error) {
		file.Close() // removes the non-persistent device
		return nil, fmt.Errorf("open tap %q: %w", name, err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fail(err)
	}
	if br != nil {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fail(fmt.Errorf("attach to bridge %q: %w", bridge, err))
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fail(fmt.Errorf("set up: %w", err))
	}
	t := &Tap{name: name}
	t.portCore = newPortCore("tap "+name, &tapIO{file: file, buf: make([]byte, MaxFrameSize+1)}, DefaultSendQueue)
	return t, nil
}

// Name is the tap device's interface name.
func (t *Tap) Name() string { return t.name }

// tapIO is the tap backend: one read or write on the tap file is one frame.
type tapIO struct {
	file *os.File
	buf  []byte // read buffer, one byte larger than a frame may be, to see oversize
}

func (t *tapIO) readFrame() ([]byte, error) {
	n, err := t.file.Read(t.buf)
	if err != nil {
		return nil, err
	}
	if n < MinFrameSize || n > MaxFrameSize {
		return nil, nil // skipped and counted: not a frame a guest can take
	}
	return append([]byte(nil), t.buf[:n]...), nil
}

func (t *tapIO) writeFrames(frames [][]byte) error {
	for _, f := range frames {
		if _, err := t.file.Write(f); err != nil {
			// Only a closed tap ends the port. Anything else (EIO while
			// the link is down, ENOBUFS) loses this frame, as a wire
			// would, and the next one may well go through.
			if errors.Is(err, os.ErrClosed) {
				return err
			}
		}
	}
	return nil
}

func (t *tapIO) close() error { return t.file.Close() }
