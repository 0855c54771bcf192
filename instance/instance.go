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
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftvm/ftvm/hypervisor/virtio"
	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/images"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/snapshot"
	"github.com/ftvm/ftvm/storage"
	"github.com/ftvm/ftvm/storage/server"
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

	// Replication (package replication sets these; a plain VM leaves
	// them zero). Record or Replay makes the VM a primary or a backup.
	Record vm.Recorder
	Replay vm.Replayer
	// Backup: the NIC is not attached to the network (received frames
	// come from the log, sent ones are dropped) and disks are not opened
	// for I/O (reads come from the log, writes are the primary's).
	Backup bool
	// Replicable, for a VM that neither records nor replays, keeps it ready
	// to become the primary of a pair while it runs (vm.Config.Replicable).
	Replicable bool
	// RecordingKickAfter bounds how long a recording guest may compute
	// without an exit while a timer is overdue (vm.Config.RecordingKickAfter;
	// default vm.DefaultRecordingKickAfter).
	RecordingKickAfter time.Duration
	// WrapTransmit, if set, wraps the NIC's send function (a primary holds
	// frames under the output rule).
	WrapTransmit func(send func(frame []byte)) func(frame []byte)
	// WrapDisk, if set, wraps each opened disk (a primary holds writes).
	WrapDisk func(index int, d virtio.BlockBackend) virtio.BlockBackend
	// StorageServer, if set, is the unix socket of an 'ftctl storage serve'
	// that owns the disks: they are opened through it for pair Pair, and
	// every write and flush carries Generation (see SetGeneration); the
	// server refuses them once another side claimed a newer generation
	// (fencing). StorageDir is then not used for the disks.
	StorageServer string
	Pair          string
	Generation    uint64
	// WallTime is what the guest's RTC reads at power-on (default now);
	// both sides of a pair must agree on it.
	WallTime time.Time
	// KeepBackupWrite, on a backup, is handed every disk write the guest
	// makes while the VM replays (p is valid only during the call): the
	// writes the primary may not have released, to re-issue on going live.
	KeepBackupWrite func(index int, off int64, p []byte)
	// KeepBackupFrame, on a backup, is handed every frame the guest sends
	// while the VM replays (valid only during the call), to send again on
	// going live.
	KeepBackupFrame func(frame []byte)
	// Waiting, if set, is told why GoLive waits (a disk still locked by
	// the old primary), each time it asks again.
	Waiting func(why string)
	// GoLive, on a backup, is asked where the log ends whether the VM goes
	// live (it arbitrates); on yes it calls Instance.GoLive and returns its
	// inputs (see vm.GoLiveFunc). LogEnded is closed when the log will grow
	// no more (see vm.Config.LogEnded).
	GoLive   vm.GoLiveFunc
	LogEnded <-chan struct{}
}

// backupDisk is a backup's disk: its size and ID, no I/O while the VM
// replays (reads come from the log, writes are the primary's to make and
// are handed to keep, if set), and the real disk once the VM went live.
type backupDisk struct {
	size  int64
	id    string
	index int
	keep  func(index int, off int64, p []byte)
	live  virtio.BlockBackend // set by GoLive, on the vCPU goroutine
}

func (d *backupDisk) ReadAt(p []byte, off int64) (int, error) {
	if d.live != nil {
		return d.live.ReadAt(p, off)
	}
	return 0, errors.New("a backup does not read its disk")
}

func (d *backupDisk) WriteAt(p []byte, off int64) (int, error) {
	if d.live != nil {
		return d.live.WriteAt(p, off)
	}
	if d.keep != nil {
		d.keep(d.index, off, p)
	}
	return len(p), nil
}

func (d *backupDisk) Flush() error {
	if d.live != nil {
		return d.live.Flush()
	}
	return nil
}

func (d *backupDisk) Size() int64 { return d.size }
func (d *backupDisk) ID() string  { return d.id }

// Instance is a VM with its network port and disks.
type Instance struct {
	VM   *vm.VM
	cfg  Config
	port network.Port
	// disks are the open disks (local files or a storage server's);
	// served are the storage server's, whose generation can change.
	disks  []openDisk
	served []*server.Disk
	client *server.Client
	// A backup's: its disks until it goes live, and where the NIC sends
	// once it does (nil before).
	store       *storage.Store
	backupDisks []*backupDisk
	livePort    network.Port
	// boot is what New booted; id the machine's snapshot identity, once
	// asked for.
	boot Boot
	id   *snapshot.Identity

	// Where the guest's outputs go, switchable between exits (WrapOutputs):
	// a live VM that becomes a primary puts its gate in front of them.
	transmit func(frame []byte)
	outDisks []*switchDisk
	console  *switchWriter
}

// openDisk is an open disk: a storage directory's file, or one served by a
// storage server (closing the client closes those).
type openDisk interface {
	virtio.BlockBackend
}

// closeDisk flushes d and, for a local file, closes it.
func closeDisk(d openDisk) error {
	err := d.Flush()
	if c, ok := d.(interface{ Close() error }); ok {
		err = errors.Join(err, c.Close())
	}
	return err
}

// New prepares the instance: it opens the disks (locking them), attaches to
// the network and creates the VM. Close releases all of it.
func New(ctx context.Context, cfg Config) (_ *Instance, err error) {
	inst := &Instance{cfg: cfg}
	defer func() {
		if err != nil {
			inst.Close()
		}
	}()
	vcfg := vm.Config{
		MemoryMiB: cfg.MemoryMiB, Kernel: cfg.Kernel, Initrd: cfg.Initrd, Cmdline: cfg.Cmdline,
		Console: cfg.Console, ConsoleInput: cfg.ConsoleInput,
		Record: cfg.Record, Replay: cfg.Replay, WallTime: cfg.WallTime, GoLive: cfg.GoLive, LogEnded: cfg.LogEnded,
	}
	if cfg.Backup {
		vcfg.ConsoleInput = nil // from the log
	}
	if cfg.Console != nil {
		inst.console = &switchWriter{Writer: cfg.Console}
		vcfg.Console = inst.console
	}
	vcfg.Replicable = cfg.Replicable
	vcfg.RecordingKickAfter = cfg.RecordingKickAfter
	boot, err := ResolveBoot(cfg)
	if err != nil {
		return nil, err
	}
	vcfg.Kernel, vcfg.Initrd, vcfg.Cmdline = boot.Kernel, boot.Initrd, boot.Cmdline
	inst.boot = boot

	for i, name := range cfg.Disks {
		if cfg.Backup {
			size, id, err := inst.diskInfo(ctx, name)
			if err != nil {
				return nil, err
			}
			d := &backupDisk{size: size, id: id, index: i, keep: cfg.KeepBackupWrite}
			inst.backupDisks = append(inst.backupDisks, d)
			sd := &switchDisk{BlockBackend: d}
			inst.outDisks = append(inst.outDisks, sd)
			vcfg.Disks = append(vcfg.Disks, vm.DiskConfig{Backend: sd})
			continue
		}
		d, err := inst.openDisk(ctx, name, cfg.Generation)
		if err != nil {
			return nil, err
		}
		var backend virtio.BlockBackend = d
		if cfg.WrapDisk != nil {
			backend = cfg.WrapDisk(i, d)
		}
		sd := &switchDisk{BlockBackend: backend}
		inst.outDisks = append(inst.outDisks, sd)
		vcfg.Disks = append(vcfg.Disks, vm.DiskConfig{Backend: sd})
	}

	if cfg.NetSocket != "" && cfg.Backup {
		hw, err := parseMAC(cfg.MAC)
		if err != nil {
			return nil, err
		}
		// Frames come from the log and what the guest sends goes nowhere,
		// until the VM goes live (GoLive attaches the port).
		inst.transmit = func(frame []byte) {
			switch {
			case inst.livePort != nil:
				_ = inst.livePort.Send(frame)
			case cfg.KeepBackupFrame != nil:
				cfg.KeepBackupFrame(frame)
			}
		}
		vcfg.Net = &vm.NetConfig{MAC: hw, Transmit: func(frame []byte) { inst.transmit(frame) }}
	} else if cfg.NetSocket != "" {
		hw, err := parseMAC(cfg.MAC)
		if err != nil {
			return nil, err
		}
		port, received, err := attachPort(ctx, cfg.NetSocket)
		if err != nil {
			return nil, err
		}
		inst.port = port
		// Send copies and queues; a full queue drops the frame, which
		// TCP recovers from, rather than stall the vCPU.
		send := func(frame []byte) { _ = port.Send(frame) }
		if cfg.WrapTransmit != nil {
			send = cfg.WrapTransmit(send)
		}
		inst.transmit = send
		vcfg.Net = &vm.NetConfig{MAC: hw, Transmit: func(frame []byte) { inst.transmit(frame) }, Received: received}
	}

	if inst.VM, err = vm.New(vcfg); err != nil {
		return nil, fmt.Errorf("create VM: %w", err)
	}
	return inst, nil
}

// Check validates cfg without creating anything: the boot files exist and
// are readable, the memory size is possible, the MAC parses, and every disk
// exists in the storage directory. Callers that would otherwise wait (a
// backup listening for its primary, a primary dialing its backup) check
// first, so a bad flag fails at once.
func Check(cfg Config) error {
	boot, err := ResolveBoot(cfg)
	if err != nil {
		return err
	}
	for what, path := range map[string]string{"kernel": boot.Kernel, "initrd": boot.Initrd} {
		if path == "" {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		f.Close()
	}
	if err := vm.CheckMemory(cfg.MemoryMiB); err != nil {
		return err
	}
	if cfg.NetSocket != "" {
		if _, err := parseMAC(cfg.MAC); err != nil {
			return err
		}
	}
	if len(cfg.Disks) == 0 {
		return nil
	}
	if cfg.StorageServer != "" {
		inst := &Instance{cfg: cfg}
		defer inst.Close()
		for _, name := range cfg.Disks {
			if _, _, err := inst.diskInfo(context.Background(), name); err != nil {
				return err
			}
		}
		return nil
	}
	dir := cfg.StorageDir
	if dir == "" {
		if dir, err = storage.DefaultDir(); err != nil {
			return err
		}
	}
	store, err := storage.Open(dir)
	if err != nil {
		return err
	}
	for _, name := range cfg.Disks {
		if _, err := store.Metadata(name); err != nil {
			return err
		}
	}
	return nil
}

// storageFor returns the storage server's client or the storage
// directory, whichever serves this instance's disks, opening it once.
func (i *Instance) storageFor(ctx context.Context) (*server.Client, *storage.Store, error) {
	if i.cfg.StorageServer != "" {
		if i.client == nil {
			c, err := server.Dial(ctx, "unix", strings.TrimPrefix(i.cfg.StorageServer, "unix:"))
			if err != nil {
				return nil, nil, fmt.Errorf("connect to the storage server at %s (is 'ftctl storage serve' running?): %w", i.cfg.StorageServer, err)
			}
			i.client = c
		}
		return i.client, nil, nil
	}
	if i.store == nil {
		dir := i.cfg.StorageDir
		if dir == "" {
			var err error
			if dir, err = storage.DefaultDir(); err != nil {
				return nil, nil, err
			}
		}
		s, err := storage.Open(dir)
		if err != nil {
			return nil, nil, err
		}
		i.store = s
	}
	return nil, i.store, nil
}

// openDisk opens disk name for I/O, writing with generation gen when a
// storage server serves it.
func (i *Instance) openDisk(ctx context.Context, name string, gen uint64) (openDisk, error) {
	client, store, err := i.storageFor(ctx)
	if err != nil {
		return nil, err
	}
	if client != nil {
		d, _, err := client.OpenDisk(ctx, i.cfg.Pair, name, gen)
		if err != nil {
			return nil, fmt.Errorf("open disk %s on the storage server: %w", name, err)
		}
		i.served = append(i.served, d)
		i.disks = append(i.disks, d)
		return d, nil
	}
	d, err := store.OpenDisk(name)
	if err != nil {
		return nil, err
	}
	i.disks = append(i.disks, d)
	return d, nil
}

// diskInfo is a disk's size and ID, without opening it for I/O (a backup's
// disks until it goes live).
func (i *Instance) diskInfo(ctx context.Context, name string) (int64, string, error) {
	client, store, err := i.storageFor(ctx)
	if err != nil {
		return 0, "", err
	}
	if client != nil {
		d, _, err := client.OpenDisk(ctx, i.cfg.Pair, name, 0)
		if err != nil {
			return 0, "", fmt.Errorf("disk %s on the storage server: %w", name, err)
		}
		return d.Size(), d.ID(), nil
	}
	m, err := store.Metadata(name)
	if err != nil {
		return 0, "", err
	}
	return m.Size, m.ID, nil
}

// CloseDisks flushes and closes the disks (releasing their locks), for a
// primary handing its guest over: the backup opens them next. The VM must
// have stopped.
func (i *Instance) CloseDisks() error {
	var errs []error
	for _, d := range i.disks {
		errs = append(errs, closeDisk(d))
	}
	i.disks = nil
	return errors.Join(errs...)
}

// SetGeneration makes every later write and flush to the storage server's
// disks carry gen: after this side won the arbiter's record (no effect on
// local disks, which are not fenced).
func (i *Instance) SetGeneration(gen uint64) {
	for _, d := range i.served {
		d.SetGeneration(gen)
	}
}

// attachPort dials the switch and starts a port whose received frames go
// to the returned channel.
func attachPort(ctx context.Context, socket string) (network.Port, <-chan []byte, error) {
	port, err := network.DialSwitch(ctx, socket)
	if err != nil {
		return nil, nil, fmt.Errorf("attach to the network at %s (is 'ftctl net serve' running?): %w", socket, err)
	}
	received := make(chan []byte, 256)
	if err := port.Start(func(frame []byte) bool {
		select {
		case received <- append([]byte(nil), frame...):
			return true
		default:
			return false // the guest is not keeping up: drop, like a full NIC ring
		}
	}); err != nil {
		port.Close()
		return nil, nil, err
	}
	return port, received, nil
}

func parseMAC(mac string) (net.HardwareAddr, error) {
	if mac == "" {
		mac = DefaultMAC
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, fmt.Errorf("MAC %q: %w", mac, err)
	}
	return hw, nil
}

// Boot is what an instance boots: files and the final command line.
type Boot struct {
	Kernel, Initrd, Cmdline string
	// SHA256 of Kernel and Initrd ("" for no initrd), from the image
	// manifest (which Inspect verified) or hashed here.
	KernelSHA256, InitrdSHA256 string
}

// ResolveBoot works out the kernel, initrd and command line cfg boots.
func ResolveBoot(cfg Config) (Boot, error) {
	b := Boot{Kernel: cfg.Kernel, Initrd: cfg.Initrd, Cmdline: cfg.Cmdline}
	var manifest *images.Manifest
	if cfg.Image != "" {
		if cfg.Kernel != "" {
			return Boot{}, errors.New("give an image or a kernel, not both")
		}
		m, err := images.Inspect(cfg.Image)
		if err != nil {
			return Boot{}, err
		}
		manifest = &m
		b.Kernel = filepath.Join(cfg.Image, m.Kernel)
		b.Initrd = filepath.Join(cfg.Image, m.Initrd)
		b.KernelSHA256, b.InitrdSHA256 = m.SHA256[m.Kernel], m.SHA256[m.Initrd]
		if b.Cmdline == "" {
			b.Cmdline = m.Cmdline
		}
	}
	if b.Kernel == "" {
		return Boot{}, errors.New("nothing to boot: give an image directory (ftctl image build) or a kernel")
	}
	extra, err := guestNetworkArgs(cfg.IP, cfg.Gateway)
	if err != nil {
		return Boot{}, err
	}
	b.Cmdline = strings.Join(strings.Fields(b.Cmdline+" "+extra+" "+cfg.Append), " ")
	if manifest != nil {
		if err := manifest.CheckWorkload(b.Cmdline); err != nil {
			return Boot{}, fmt.Errorf("%w (image %s)", err, cfg.Image)
		}
	}
	return b, nil
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

// GoLive turns a backup's instance into a live one, on the vCPU goroutine
// (from Config.GoLive): it opens the disks for I/O (taking their locks;
// writing with generation gen on a storage server),
// writes first what rewrite returns for each disk (the writes the primary
// may not have released), attaches the NIC to the switch with the same MAC,
// announces it there, lets resend send frames again (those the primary may
// not have released), and returns the frames for the guest.
func (i *Instance) GoLive(ctx context.Context, gen uint64, rewrite func(index int, d virtio.BlockBackend) error, resend func(send func(frame []byte))) (vm.LiveInputs, error) {
	for _, bd := range i.backupDisks {
		name := i.cfg.Disks[bd.index]
		d, err := i.openDisk(ctx, name, gen)
		// A disk still locked is held by the old primary on this host: it
		// releases it when it stops (a handover closes its disks first,
		// a crash releases the lock with the process, a lost claim halts
		// it). Writing before that could interleave with its last writes.
		for wait := 10 * time.Millisecond; errors.Is(err, storage.ErrLocked); wait = min(2*wait, time.Second) {
			if i.cfg.Waiting != nil {
				i.cfg.Waiting(fmt.Sprintf("disk %s is still locked (%v): the old primary on this host holds it until it stops; a paused or hung one must be killed, or the disks served by a storage server that fences it", name, err))
			}
			select {
			case <-ctx.Done():
				return vm.LiveInputs{}, fmt.Errorf("go live: disk %s still in use: %w", name, err)
			case <-time.After(wait):
			}
			d, err = i.openDisk(ctx, name, gen)
		}
		if err != nil {
			return vm.LiveInputs{}, fmt.Errorf("go live: open disk %s: %w", name, err)
		}
		if rewrite != nil {
			if err := rewrite(bd.index, d); err != nil {
				return vm.LiveInputs{}, fmt.Errorf("go live: disk %s: %w", i.cfg.Disks[bd.index], err)
			}
		}
		bd.live = d
	}
	if i.cfg.NetSocket == "" {
		return vm.LiveInputs{}, nil
	}
	hw, err := parseMAC(i.cfg.MAC)
	if err != nil {
		return vm.LiveInputs{}, err
	}
	port, received, err := attachPort(ctx, i.cfg.NetSocket)
	if err != nil {
		return vm.LiveInputs{}, fmt.Errorf("go live: %w", err)
	}
	i.port, i.livePort = port, port
	announce(port, hw)
	if resend != nil {
		resend(func(frame []byte) { _ = port.Send(frame) })
	}
	return vm.LiveInputs{Received: received}, nil
}

// announce tells the switch where the guest's MAC is now, as QEMU does after
// a migration: RARP broadcasts from that MAC, three times over 150 ms (one
// may be lost while the switch drops the old port).
func announce(port network.Port, mac net.HardwareAddr) {
	frame := make([]byte, 60) // the minimum Ethernet frame, zero padded
	copy(frame[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(frame[6:12], mac)
	frame[12], frame[13] = 0x80, 0x35 // RARP
	arp := frame[14:]
	arp[0], arp[1] = 0, 1       // Ethernet
	arp[2], arp[3] = 0x08, 0x00 // IPv4
	arp[4], arp[5] = 6, 4
	arp[6], arp[7] = 0, 3 // reverse request
	copy(arp[8:14], mac)  // sender hardware address; protocol addresses 0
	copy(arp[18:24], mac) // target hardware address
	_ = port.Send(frame)
	go func() {
		for _, d := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond} {
			time.Sleep(d)
			_ = port.Send(frame)
		}
	}()
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
		errs = append(errs, closeDisk(d))
	}
	if i.client != nil {
		errs = append(errs, i.client.Close())
	}
	return errors.Join(errs...)
}
