package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/images"
	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/network"
	"github.com/ftvm/ftvm/replication"
)

func newRunCommand() *cobra.Command {
	var (
		cfg      instance.Config
		console  string
		forwards []string
		stats    bool
		role     string
		peer     string
		listen   string
		every    time.Duration
		silence  time.Duration
		// consoleLive: the primary's console is not held under the
		// output rule (debugging).
		consoleLive bool
		maxLag      time.Duration
		snap        snapshotFlags
		protectTo   string
		again       bool
		resync      bool
	)
	cmd := &cobra.Command{
		Use:   "run (--image DIR | --kernel FILE [--initrd FILE] [--cmdline ARGS]) [--role primary --peer ADDR | --role backup --listen ADDR]",
		Short: "Boot a guest in a VM, alone or as the primary or backup of a fault-tolerant pair",
		Long: `Boot a Linux guest in one VM. The guest's serial console is this terminal:
what it prints appears here, and lines typed here reach it. Ctrl-C stops the VM.

Network: --net SOCKET attaches a virtio-net NIC to the switch of a running
'ftctl net serve --socket SOCKET' (which outlives this VM); --net auto starts a
switch inside this process instead, with the --forward rules. --ip configures
the guest's eth0 (the image's /init reads it from the kernel command line).

Disks: --disk NAME attaches a disk from the storage directory (see 'ftctl disk
create') as vda, vdb, ... in order; the image's /init mounts vda on /data.

Replication: start the backup first with --role backup --listen ADDR, then the
primary with the same machine options and --role primary --peer ADDR (ADDR is
unix:/path/to.sock or host:port). The primary logs every non-deterministic
input into the log channel; the backup replays them exit for exit, checks the
primary's register and memory digests and the hash of every frame and disk
write, and loads a checkpoint after each watchdog kick. The backup refuses a
primary whose machine differs (image, memory, command line, NIC, disks, or the
CPUID its host's KVM gives the guest), naming the difference. The primary's
frames, disk writes and console output leave only after the backup
acknowledged the log that produced them (the output rule; --console-live
shows the console unheld, for debugging). The backup
does not attach to the network or write the disks; its console shows the
replayed output. Both print a status line every --status-every. If the backup
dies, the primary keeps running but holds all outputs (its guest pauses at the
next one). With --arbiter and --pair the primary then claims the pair's record:
if it wins it releases what it held and runs on unprotected (status says so);
if the backup claimed first it stops (exit 7) without releasing anything.
Without --arbiter it holds them until stopped. With the same --arbiter and
--pair, a backup whose primary is lost (its log channel reset, or silent for
--peer-timeout) replays everything it received, claims the record, and if it
wins goes live where the log ends: it opens the disks, re-issues the disk
writes the primary may not have released, attaches the NIC to the switch with
the guest's MAC and announces it, and the guest runs on (clients through the
switch keep their TCP connections). If the primary won, the backup exits 7.
With --protect-to ADDR a backup that went live protects the guest again
without stopping it (re-protection): it copies the running guest's memory to
the new backup listening at ADDR while the guest runs, in rounds that resend
the pages written meanwhile (auto-converge throttles a guest that writes
faster than the channel sends), then stops the guest at one exit for the
last pages and the machine state, and from there on records for the new
backup as a primary does; the status line and --control say so. The pause
is the last round only. --protect-again on a primary does the same after
it lost its backup and won the record, to a new backup at --peer; with
--resync a backup that diverges is that new backup: it throws its VM away,
says at which exit it diverged, and waits for the fresh copy (resync).
SIGUSR2 to a primary is a planned switchover: its VM stops at an exit, it
waits until the backup acknowledged everything and every output left, and
hands the guest over; the backup claims the record and goes live where the
log ends, losing nothing (the primary exits 0).

Snapshots (a VM alone): --snapshot-at-ready FILE boots, waits for the
guest's "ftvm-guest ready" console line, writes a snapshot of the whole machine
to FILE at the next exit, stops the VM there and exits 0. --restore FILE starts
the VM from such a snapshot instead of booting it: give the same machine
options (image, memory, command line, NIC and MAC, disks); a snapshot of
another machine is refused before anything is opened, naming the difference.
The disks are not in the snapshot: restore on the disks the guest had (as
they were when it stopped). Fast start of a pair: give both sides the same
--restore FILE; the primary records from the snapshot's state, the backup
replays from it, and a backup started from another snapshot (or booting) is
refused.

The VM follows ftvm's determinism contract even without a backup: no in-kernel
interrupt controller or clocks; a userspace 8259 PIC, 8254 PIT, ACPI PM timer
(the guest's clocksource), CMOS RTC and 16550 UART; interrupts injected only at
VM exits.

Exit status: 0 when the guest powers off; 2 when it resets (a reboot, or a
panic with panic=N); 3 when it halts for good instead of powering off; 1 on a
VM failure (triple fault, KVM internal error), with the vCPU registers and the
last console lines; 6 when the image's /init powered off after its workload
failed (it prints "ftvm-guest exit status=N"); 7 when a primary lost the
arbiter's record to its backup; 130 after Ctrl-C. A primary that stops
while outputs are still held (its backup lost, no arbiter) says what it
never released and exits 1. A backup exits 0 when the primary's log
ended cleanly and it replayed all of it, 4 when it diverged from the primary
(with the first differing exit and the last log entries), 5 when the primary
was lost (the log ended without a clean close).`,
		Example: `  ftctl run --image out/image
  ftctl run --image out/image --append 'ftvm.workload=sleep ftvm.seconds=5'
  ftctl disk create data --size 1G --mkfs ext4
  ftctl run --image out/image --net auto --forward 127.0.0.1:7000=192.168.127.2:7000 \
      --ip 192.168.127.2/24 --disk data --append ftvm.workload=kv
  ftctl run --kernel vmlinux --initrd initrd.img --cmdline 'console=ttyS0 panic=-1'

  # boot once, then start from the guest's ready line
  ftctl run --image out/image --append ftvm.workload=kv --snapshot-at-ready kv.snap
  ftctl run --image out/image --append ftvm.workload=kv --restore kv.snap

  # a fault-tolerant pair on one host (two terminals)
  ftctl run --image out/image --net /tmp/net.sock --ip 192.168.127.2/24 --disk data \
      --append ftvm.workload=kv --role backup --listen unix:/tmp/ft.sock --console none
  ftctl run --image out/image --net /tmp/net.sock --ip 192.168.127.2/24 --disk data \
      --append ftvm.workload=kv --role primary --peer unix:/tmp/ft.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			// Every flag is checked before anything is opened, created or
			// listened on: a mistyped flag must not cost a file.
			switch role {
			case "", "none":
				if peer != "" || listen != "" {
					return errors.New("--peer and --listen need --role primary or --role backup")
				}
			case "primary":
				if peer == "" {
					return errors.New("--role primary needs --peer ADDR: the backup's --listen address")
				}
			case "backup":
				if listen == "" {
					return errors.New("--role backup needs --listen ADDR (unix:/path/to.sock or host:port) for the primary to connect to")
				}
				if cfg.NetSocket != "" {
					// The backup's NIC is not attached: frames come from the log.
					forwards = nil
				}
			default:
				return fmt.Errorf("--role %q: want primary, backup or none", role)
			}
			if consoleLive && role != "primary" {
				return errors.New("--console-live is for --role primary (only a primary holds console output)")
			}
			if again && role != "primary" {
				return errors.New("--protect-again is for --role primary: after losing its backup it makes a new one at --peer")
			}
			if resync && role != "backup" {
				return errors.New("--resync is for --role backup: after a divergence it waits for a fresh copy of the primary")
			}
			if protectTo != "" && role != "backup" {
				return errors.New("--protect-to is for --role backup: once live, the survivor makes a new backup there")
			}
			cfg.StorageServer, _ = cmd.Flags().GetString("storage-server")
			cfg.Pair, _ = cmd.Flags().GetString("pair")
			if err := instance.Check(cfg); err != nil {
				return err
			}
			if err := snap.check(cfg, role); err != nil {
				return err
			}
			out, closeConsole, err := openConsole(cmd, console)
			if err != nil {
				return err
			}
			defer closeConsole()
			cfg.Console = out
			if console == "stdio" {
				cfg.ConsoleInput = os.Stdin
			}
			if role == "backup" {
				return runBackup(cmd, cfg, listen, every, silence, protectTo, resync)
			}
			if len(forwards) > 0 && cfg.NetSocket != "auto" {
				return errors.New("--forward needs --net auto; with a separate switch, give the forwards to 'ftctl net serve'")
			}
			if cfg.NetSocket == "auto" {
				sock, stop, err := startSwitch(ctx, forwards)
				if err != nil {
					return err
				}
				defer stop()
				cfg.NetSocket = sock
			}
			if role == "primary" {
				return runPrimary(cmd, cfg, peer, every, silence, maxLag, stats, consoleLive, again)
			}
			return runPlain(cmd, cfg, snap, stats)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Image, "image", "", "image directory from 'ftctl image build' (kernel, initrd, default command line)")
	f.StringVar(&cfg.Kernel, "kernel", "", "guest kernel: vmlinux (PVH entry) or bzImage")
	f.StringVar(&cfg.Initrd, "initrd", "", "initial ramdisk")
	f.StringVar(&cfg.Cmdline, "cmdline", "", "kernel command line (default: the image's)")
	f.StringVar(&cfg.Append, "append", "", "arguments appended to the kernel command line")
	f.StringVar(&console, "console", "stdio", "where the serial console goes: stdio, none, or a file path (appended to, never truncated)")
	f.BoolVar(&consoleLive, "console-live", false, "primary: show console output as the guest prints it instead of holding it until the backup has the log (debugging; a console line may then announce what a failover loses)")
	f.IntVar(&cfg.MemoryMiB, "mem", 256, "guest memory in MiB")
	f.StringVar(&cfg.NetSocket, "net", "", "attach a NIC to the switch at this unix socket, or 'auto' for a switch inside this process")
	f.StringArrayVar(&forwards, "forward", nil, "with --net auto: expose a guest TCP port, HOST:PORT=GUEST:PORT (repeatable)")
	f.StringVar(&cfg.MAC, "mac", instance.DefaultMAC, "the NIC's MAC address")
	f.StringVar(&cfg.IP, "ip", "", "guest eth0 address, e.g. 192.168.127.2/24, or dhcp")
	f.StringVar(&cfg.Gateway, "gateway", "", "guest default gateway (default: .1 of the --ip subnet)")
	f.StringArrayVar(&cfg.Disks, "disk", nil, "attach this disk from the storage directory (repeatable; vda, vdb, ...)")
	f.StringVar(&cfg.StorageDir, "storage", "", "storage directory (default $FTVM_STORAGE or ~/.local/share/ftvm/storage)")
	f.BoolVar(&stats, "stats", false, "print exit statistics when the VM stops")
	f.StringVar(&snap.restore, "restore", "", "start the VM (or both sides of a pair) from this snapshot instead of booting it (give the machine options it was taken with)")
	f.StringVar(&snap.atReady, "snapshot-at-ready", "", "boot, write a snapshot to this file when the guest prints its ready line, and stop (the file must not exist)")
	f.StringVar(&role, "role", "none", "replication role: none, primary (needs --peer) or backup (needs --listen)")
	f.StringVar(&peer, "peer", "", "primary: the backup's log channel address, unix:/path/to.sock or host:port")
	f.StringVar(&listen, "listen", "", "backup: where to accept the primary, unix:/path/to.sock or host:port")
	f.DurationVar(&every, "status-every", 10*time.Second, "primary/backup: print a status line this often (0: never)")
	f.StringVar(&protectTo, "protect-to", "", "backup: once live after a failover, protect the guest again: copy it while it runs to a new backup listening at this address (start one with --role backup --listen ADDR; asked every second until one answers) and replicate to it")
	f.BoolVar(&again, "protect-again", false, "primary: after losing the backup and winning the arbiter's record, make a new backup at --peer from the running guest (asked every second until one listens there: a --resync backup after a divergence, or a new one started in its place)")
	f.BoolVar(&resync, "resync", false, "backup: after diverging from the primary (a digest, output or exit differs) do not stop: log the first differing exit and wait on --listen for a fresh copy of the primary's running state (the primary needs --protect-again)")
	f.DurationVar(&silence, "peer-timeout", 3*time.Second, "primary/backup: declare the peer lost after this long without hearing from it")
	addLogAuthFlags(f)
	addArbiterFlags(f)
	addControlFlag(f)
	f.DurationVar(&maxLag, "max-lag", replication.DefaultMaxLag, "primary: slow the guest down when the backup falls this far behind (the age of the oldest log entry it has not replayed); a failover replays about this much (negative: no bound)")
	return cmd
}

// printStats prints the stopped VM's exit statistics (--stats).
func printStats(cmd *cobra.Command, inst *instance.Instance) {
	st := inst.VM.Stats()
	fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: %d exits %v; %d interrupts injected, %d windows, %d kicks; halted %v; busiest ports %v\n",
		st.Total(), st.ByKind(), st.Injected, st.Windows, st.Kicks, st.HaltedTime, st.TopPorts(6))
}

// openConsole opens where --console sends the guest's serial output. A
// file is appended to, never truncated: a mistyped path must not empty a
// disk image or a log someone needs.
func openConsole(cmd *cobra.Command, console string) (io.Writer, func(), error) {
	switch console {
	case "stdio":
		return cmd.OutOrStdout(), func() {}, nil
	case "none":
		return io.Discard, func() {}, nil
	case "":
		return nil, nil, errors.New("--console: give stdio, none, or a file path")
	}
	if fi, err := os.Stat(console); err == nil && !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("--console %s: not a regular file (%v); give a file path, stdio or none", console, fi.Mode().Type())
	}
	f, err := os.OpenFile(console, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("--console: %w", err)
	}
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "ftctl: appending the console to %s (%d bytes already there)\n", console, fi.Size())
	}
	return f, func() { f.Close() }, nil
}

// stopError turns how a VM stopped into ftctl's exit status.
func stopError(reason vm.StopReason, v *vm.VM) error {
	// v may be nil (a backup that went live reports no VM): no registers
	// or console then.
	report := func(err error) error {
		if v == nil {
			return err
		}
		return v.Report(err)
	}
	switch reason {
	case vm.StoppedPowerOff:
		if v == nil {
			return nil
		}
		if status, ok := images.GuestExitStatus(v.ConsoleOutput()); ok && status != 0 {
			return &exitError{code: 6, err: report(fmt.Errorf("the guest powered off after its workload failed (ftvm-guest exit status=%d: 1 workload error, 2 bad command line, 3 workload panic, 4 guest setup failed)", status))}
		}
	case vm.StoppedReset:
		return &exitError{code: 2, err: report(errors.New("the guest reset the machine (a reboot, or a panic with panic=N)"))}
	case vm.StoppedHalted:
		return &exitError{code: 3, err: report(errors.New("the guest halted the CPU with interrupts disabled instead of powering off (no ACPI power-off?)"))}
	case vm.StoppedCancelled:
		return &exitError{code: 130, err: errors.New("stopped")}
	}
	return nil
}

// startSwitch runs an embedded switch for this VM alone on a private socket.
func startSwitch(ctx context.Context, forwardSpecs []string) (string, func(), error) {
	var fwds []network.Forward
	for _, spec := range forwardSpecs {
		f, err := network.ParseForward(spec)
		if err != nil {
			return "", nil, fmt.Errorf("--forward %q: %w", spec, err)
		}
		fwds = append(fwds, f)
	}
	sw, err := network.NewSwitch(network.SwitchConfig{Forwards: fwds})
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "ftctl-net-")
	if err != nil {
		return "", nil, err
	}
	sock := filepath.Join(dir, "switch.sock")
	swCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- sw.Serve(swCtx, sock) }()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			cancel()
			os.RemoveAll(dir)
			return "", nil, fmt.Errorf("start the network switch: %w", err)
		default:
		}
		if i > 200 {
			cancel()
			os.RemoveAll(dir)
			return "", nil, errors.New("the network switch did not come up within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return sock, func() { cancel(); <-done; os.RemoveAll(dir) }, nil
}
