// Package instance runs one VM the way a user asks for it: a guest image (or
// kernel and initrd), disks from a storage directory, and a NIC attached to a
// network port (the embedded switch). It composes hypervisor/vm, storage and
// network, which know nothing of each other; ftctl run is a thin layer over
// it, and replication will compose two of these.
package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/images"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/storage"
)

// DefaultMAC is the guest NIC's address unless configured: a locally
// administered unicast address, fixed so the guest's DHCP lease is stable.
const DefaultMAC = "5a:94:ef:00:00:02"

// Config describes one VM instance.
type Config struct {
	// Image is an image directory from "ftctl image build"; or give Kernel
	// (and Initrd, Cmdline) directly.
	Image                   string
	Kernel, Initrd, Cmdline string
	// Append is added to the kernel command line.
	Append    string
	MemoryMiB int

	Console      io.Writer
	ConsoleInput io.Reader

	// NetSocket attaches a NIC to the switch serving this unix socket
	// ("ftctl net serve"); empty means no NIC.
	NetSocket string
	// MAC of the NIC; default DefaultMAC.
	MAC string
	// IP configures the guest's eth0: "192.168.127.2/24" (static, gateway
	// .1 of that subnet unless Gateway says otherwise) or "dhcp"; empty
	// leaves it to the guest's command line.
	IP, Gateway string

	// Disks are names in the storage directory StorageDir (default
	// storage.DefaultDir()), attached as vda, vdb, ... in order.
	Disks      []string
	StorageDir string
}

// Instance is a VM with its network port and disks.
type Instance struct {
	VM    *vm.VM
	port  network.Port
	disks []*storage.Disk
}

// New prepares the instance: it opens the disks (locking them), attaches to
// the network and creates the VM. Close releases all of it.
func New(ctx context.Context, cfg Config) (_ *Instance, err error) {
	inst := &Instance{}
	defer func() {
		if err != nil {
			inst.Close()
		}
	}()
	vcfg := vm.Config{
		MemoryMiB: cfg.MemoryMiB, Kernel: cfg.Kernel, Initrd: cfg.Initrd, Cmdline: cfg.Cmdline,
		Console: cfg.Console, ConsoleInput: cfg.ConsoleInput,
	}
	if cfg.Image != "" {
		if cfg.Kernel != "" {
			return nil, errors.New("give an image or a kernel, not both")
		}
		m, err := images.Inspect(cfg.Image)
		if err != nil {
			return nil, err
		}
		vcfg.Kernel = filepath.Join(cfg.Image, m.Kernel)
		vcfg.Initrd = filepath.Join(cfg.Image, m.Initrd)
		if vcfg.Cmdline == "" {
			vcfg.Cmdline = m.Cmdline
		}
	}
	if vcfg.Kernel == "" {
		return nil, errors.New("nothing to boot: give an image directory (ftctl image build) or a kernel")
	}
	extra, err := guestNetworkArgs(cfg.IP, cfg.Gateway)
	if err != nil {
		return nil, err
	}
	vcfg.Cmdline = strings.Join(strings.Fields(vcfg.Cmdline+" "+extra+" "+cfg.Append), " ")

	if len(cfg.Disks) > 0 {
		dir := cfg.StorageDir
		if dir == "" {
			if dir, err = storage.DefaultDir(); err != nil {
				return nil, err
			}
		}
		store, err := storage.Open(dir)
		if err != nil {
			return nil, err
		}
		for _, name := range cfg.Disks {
			d, err := store.OpenDisk(name)
			if err != nil {
				return nil, err
			}
			inst.disks = append(inst.disks, d)
			vcfg.Disks = append(vcfg.Disks, vm.DiskConfig{Backend: d})
		}
	}

	if cfg.NetSocket != "" {
		mac := cfg.MAC
		if mac == "" {
			mac = DefaultMAC
		}
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return nil, fmt.Errorf("MAC %q: %w", mac, err)
		}
		port, err := network.DialSwitch(ctx, cfg.NetSocket)
		if err != nil {
			return nil, fmt.Errorf("attach to the network at %s (is 'ftctl net serve' running?): %w", cfg.NetSocket, err)
		}
		inst.port = port
		received := make(chan []byte, 256)
		if err := port.Start(func(frame []byte) bool {
			select {
			case received <- append([]byte(nil), frame...):
				return true
			default:
				return false // the guest is not keeping up: drop, like a full NIC ring
			}
		}); err != nil {
			return nil, err
		}
		vcfg.Net = &vm.NetConfig{
			MAC: hw,
			// Send copies and queues; a full queue drops the frame, which
			// TCP recovers from, rather than stall the vCPU.
			Transmit: func(frame []byte) { _ = port.Send(frame) },
			Received: received,
		}
	}

	if inst.VM, err = vm.New(vcfg); err != nil {
		return nil, fmt.Errorf("create VM: %w", err)
	}
	return inst, nil
}

// guestNetworkArgs turns the instance's IP settings into the guest /init's
// command-line parameters.
func guestNetworkArgs(ip, gw string) (string, error) {
	switch ip {
	case "":
		if gw != "" {
			return "", errors.New("a gateway needs an IP address (--ip)")
		}
		return "", nil
	case "dhcp":
		args := "ftvm.ip=dhcp"
		if gw != "" {
			args += " ftvm.gw=" + gw
		}
		return args, nil
	}
	addr, subnet, err := net.ParseCIDR(ip)
	if err != nil || addr.To4() == nil {
		return "", fmt.Errorf("guest IP %q: want an IPv4 address with prefix length, like 192.168.127.2/24, or dhcp", ip)
	}
	if gw == "" {
		g := subnet.IP.To4()
		gw = net.IPv4(g[0], g[1], g[2], g[3]+1).String()
	}
	if net.ParseIP(gw) == nil || !subnet.Contains(net.ParseIP(gw)) {
		return "", fmt.Errorf("gateway %q is not an address in %s", gw, subnet)
	}
	return "ftvm.ip=" + ip + " ftvm.gw=" + gw, nil
}

// Run runs the VM until it stops (see vm.VM.Run).
func (i *Instance) Run(ctx context.Context) (vm.StopReason, error) {
	return i.VM.Run(ctx)
}

// Close releases the VM, the network port and the disks (flushing them).
func (i *Instance) Close() error {
	var errs []error
	if i.VM != nil {
		errs = append(errs, i.VM.Close())
	}
	if i.port != nil {
		errs = append(errs, i.port.Close())
	}
	for _, d := range i.disks {
		errs = append(errs, d.Flush(), d.Close())
	}
	return errors.Join(errs...)
}
