package network

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNewNetns runs fn on an OS thread moved into a fresh network namespace
// that only this test can see, so nothing it creates or sends touches the
// host's network. The goroutine exits with the thread still locked, which
// makes Go discard the thread instead of reusing it in the wrong namespace.
func inNewNetns(t *testing.T, fn func() error) {
	t.Helper()
	testenv.NeedRoot(t, "network namespaces and tap devices")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		testenv.Skipf(t, "no /dev/net/tun: %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		ns, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("create network namespace: %w", err)
			return
		}
		defer ns.Close()
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// packetSocket is an AF_PACKET socket bound to one interface: it sees what
// the interface receives and can transmit on it.
type packetSocket struct {
	fd      int
	ifindex int
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func openPacketSocket(ifindex int) (*packetSocket, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(etherTypeTest)))
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(etherTypeTest), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind packet socket: %w", err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &packetSocket{fd: fd, ifindex: ifindex}, nil
}

func (p *packetSocket) send(frame []byte) error {
	return unix.Sendto(p.fd, frame, 0, &unix.SockaddrLinklayer{
		Protocol: htons(etherTypeTest), Ifindex: p.ifindex, Halen: 6, Addr: [8]byte(append(frame[0:6:6], 0, 0)),
	})
}

// expect reads until a frame equal to want arrives or 5s pass.
func (p *packetSocket) expect(want []byte) error {
	buf := make([]byte, MaxFrameSize)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(p.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if bytes.Equal(buf[:n], want) {
			return nil
		}
	}
	return errors.New("frame not seen on the bridge within 5s")
}

func TestTapOnBridge(t *testing.T) {
	inNewNetns(t, func() error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ftbr0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge: %w", err)
		}
		if err := netlink.LinkSetUp(br); err != nil {
			return err
		}
		tap, err := OpenTap("fttap0", "ftbr0")
		if err != nil {
			return err
		}
		defer tap.Close()
		link, err := netlink.LinkByName(tap.Name())
		if err != nil {
			return err
		}
		if link.Attrs().MasterIndex != br.Attrs().Index {
			return fmt.Errorf("tap master index %d, want the bridge's %d", link.Attrs().MasterIndex, br.Attrs().Index)
		}
		if link.Attrs().Flags&(1<<0) == 0 { // net.FlagUp
			return errors.New("tap is not up")
		}
		got := make(chan []byte, 64)
		if err := tap.Start(func(f []byte) bool {
			// The kernel sends its own chatter (IPv6 solicitations) out of
			// the tap; keep only the test's EtherType.
			if binary.BigEndian.Uint16(f[12:]) == etherTypeTest {
				got <- f
			}
			return true
		}); err != nil {
			return err
		}
		ps, err := openPacketSocket(br.Attrs().Index)
		if err != nil {
			return err
		}
		defer unix.Close(ps.fd)

		// Guest -> tap -> bridge.
		out := ethernet(broadcastMAC, macA, etherTypeTest, []byte("from the guest through the tap into the bridge"))
		if err := tap.Send(out); err != nil {
			return err
		}
		if err := ps.expect(out); err != nil {
			return fmt.Errorf("guest to bridge: %w", err)
		}

		// Bridge -> tap -> guest.
		in := ethernet(broadcastMAC, macB, etherTypeTest, []byte("from the bridge out of the tap to the guest"))
		if err := ps.send(in); err != nil {
			return fmt.Errorf("send on bridge: %w", err)
		}
		select {
		case f := <-got:
			if !bytes.Equal(f, in) {
				return fmt.Errorf("tap delivered % x, want % x", f, in)
			}
		case <-time.After(5 * time.Second):
			return errors.New("bridge to guest: frame not delivered by the tap within 5s")
		}
		if s := tap.Stats(); s.SentFrames != 1 || s.RecvFrames < 1 {
			return fmt.Errorf("tap stats %+v", s)
		}

		// Closing removes the device: nothing is left for a restarted VMM
		// to trip over, and the name can be used again.
		if err := tap.Close(); err != nil {
			return fmt.Errorf("close: %w", err)
		}
		if _, err := netlink.LinkByName("fttap0"); err == nil {
			return errors.New("tap device still exists after Close")
		}
		again, err := OpenTap("fttap0", "ftbr0")
		if err != nil {
			return fmt.Errorf("reopen: %w", err)
		}
		again.Close()
		return nil
	})
}

func TestOpenTapErrors(t *testing.T) {
	inNewNetns(t, func() error {
		if _, err := OpenTap("fttap1", "nosuchbr"); err == nil || !strings.Contains(err.Error(), `"nosuchbr"`) {
			return fmt.Errorf("missing bridge: %v", err)
		}
		// A kernel-chosen name, no bridge.
		tap, err := OpenTap("", "")
		if err != nil {
			return err
		}
		defer tap.Close()
		if !strings.HasPrefix(tap.Name(), "tap") {
			return fmt.Errorf("kernel-chosen name %q", tap.Name())
		}
		if _, err := OpenTap("fttap1", tap.Name()); err == nil || !strings.Contains(err.Error(), "not a bridge") {
			return fmt.Errorf("non-bridge master: %v", err)
		}
		if _, err := OpenTap(strings.Repeat("x", 16), ""); err == nil {
			return errors.New("over-long name accepted")
		}
		// The name is taken while the tap is open.
		if _, err := OpenTap(tap.Name(), ""); err == nil {
			return errors.New("second open of a tap in use succeeded")
		}
		return nil
	})
}
