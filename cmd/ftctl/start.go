package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ftvm/ftvm/failover/supervisor"
)

// machineFlags are the 'ftctl run' flags 'ftctl start' takes and hands
// to both sides unchanged (their definitions are run's own).
func machineFlags() []string {
	return []string{"image", "kernel", "initrd", "cmdline", "append", "mem", "mac", "ip", "gateway",
		"disk", "status-every", "peer-timeout", "max-lag"}
}

// addRunDirFlag registers --run-dir; pairRunDir reads it back.
func addRunDirFlag(fs *pflag.FlagSet) {
	fs.String("run-dir", "", "the pair's run directory (default $XDG_RUNTIME_DIR/ftvm/NAME, /run/ftvm/NAME as root, else ~/.local/state/ftvm/NAME)")
}

// pairRunDir is NAME's run directory: --run-dir, or the default.
func pairRunDir(cmd *cobra.Command, name string) (supervisor.RunDir, error) {
	if err := supervisor.ValidateName(name); err != nil {
		return "", err
	}
	if dir, _ := cmd.Flags().GetString("run-dir"); dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", fmt.Errorf("--run-dir %s: %w", dir, err)
		}
		return supervisor.RunDir(abs), nil
	}
	return supervisor.DefaultDir(name)
}

// existingRunDir is NAME's run directory, which must exist.
func existingRunDir(cmd *cobra.Command, name string) (supervisor.RunDir, error) {
	dir, err := pairRunDir(cmd, name)
	if err != nil {
		return "", err
	}
	ok, err := dir.Exists()
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("no pair %q on this host (no run directory %s); start one with 'ftctl start %s --image DIR' or give --run-dir", name, dir, name)
	}
	return dir, nil
}

// changedArgs turns the flags set on the command line into arguments
// that set them again, as --name=value (a value may start with '-').
func changedArgs(fs *pflag.FlagSet, names []string) []string {
	var args []string
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil || !f.Changed {
			continue
		}
		values := []string{f.Value.String()}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			values = sv.GetSlice()
		}
		for _, v := range values {
			args = append(args, "--"+name+"="+v)
		}
	}
	return args
}

func newStartCommand() *cobra.Command {
	var (
		netSock    string
		storageSrv string
		forwards   []string
		foreground bool
		timeout    time.Duration
		noReprot   bool
	)
	cmd := &cobra.Command{
		Use:   "start NAME (--image DIR | --kernel FILE ...) [machine options of 'ftctl run'] [--forward HOST=GUEST ...]",
		Short: "Start a fault-tolerant pair on this host and return once it is protected",
		Long: `Start a primary/backup pair named NAME on this host: a network switch
('ftctl net serve', unless --net names a running one), a storage server
('ftctl storage serve': it owns the disks and the arbiter record and refuses
a stale side's writes; unless --storage-server names a running one, or is
none), the backup, then the primary, each an ftctl process under a
supervisor. The machine options are
those of 'ftctl run' and go to both sides. ftctl start returns once the
primary reports the pair protected (the backup has the log); the supervisor
runs on in the background (--foreground: it stays attached, Ctrl-C stops the
pair).

Everything lives in the run directory (see --run-dir): each process's pid
file and log (switch.log, storage.log, backup.log, primary.log,
supervisor.log), the
guests' consoles (primary.console, backup.console), the control sockets
(primary.sock, backup.sock: 'ftctl status' reads them; GET /metrics gives
Prometheus text) and the log channel socket.

When the primary dies, the backup claims the arbiter's record and goes live
(see 'ftctl failover'), and then the pair is protected again without stopping
the guest: the supervisor starts a new backup (listening on log2.sock, then
log3.sock, ...), the survivor copies its running guest there in rounds while
it runs, pauses it for the last round only, and is the primary of a new pair.
Its files take the primary's names (primary.sock, primary.pid, primary.log,
primary.console; the dead primary's log and console are kept as
primary.log.failedN); 'ftctl status' shows the transfer. --no-reprotect leaves
the survivor unprotected instead. When the backup dies, the primary claims the
record, and the supervisor starts a new backup on the same log socket which the
primary protects the same way (the lost backup's log is kept as
backup.log.lostN); with --no-reprotect the primary runs on unprotected.

Exit status: 0 once the pair is protected (--foreground: once both sides
have exited, or after Ctrl-C); 1 when a side failed to start (its log's last
lines are shown, and what was started is stopped) or the pair is already
running.`,
		Example: `  ftctl disk create kvdata --size 1G --mkfs ext4
  ftctl start kv --image out/image --ip 192.168.127.2/24 --disk kvdata \
      --append ftvm.workload=kv --forward 127.0.0.1:7000=192.168.127.2:7000
  ftctl status kv
  ftctl failover kv --kill
  ftctl stop kv`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			dir, err := pairRunDir(cmd, name)
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if image, _ := f.GetString("image"); image == "" {
				if kernel, _ := f.GetString("kernel"); kernel == "" {
					return errors.New("give the machine: --image DIR (from 'ftctl image build') or --kernel FILE")
				}
			}
			if f.Changed("storage") && storageSrv != "" && storageSrv != supervisor.NoStorageServer {
				return errors.New("--storage names the directory of the storage server ftctl start starts; with --storage-server SOCK, that server serves its own")
			}
			if len(forwards) > 0 && netSock != "" {
				return errors.New("--forward configures the switch ftctl start starts; with --net, give the forwards to that switch's 'ftctl net serve'")
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find ftctl's executable to start the pair's processes: %w", err)
			}
			if netSock != "" {
				if netSock, err = filepath.Abs(netSock); err != nil {
					return fmt.Errorf("--net: %w", err)
				}
			}
			storageDir, _ := f.GetString("storage")
			if storageSrv != "" && storageSrv != supervisor.NoStorageServer {
				if storageSrv, err = filepath.Abs(storageSrv); err != nil {
					return fmt.Errorf("--storage-server: %w", err)
				}
			}
			pair := supervisor.Pair{Name: name, Dir: dir, Ftctl: exe, Machine: changedArgs(f, machineFlags()),
				Net: netSock, Forwards: forwards, StorageServer: storageSrv, StorageDir: storageDir, Timeout: timeout, NoReprotect: noReprot}
			out := cmd.OutOrStdout()
			if foreground {
				return pair.Run(cmd.Context(), func() { printWatchHints(out, name, dir, os.Getpid()) })
			}
			// Detached: the same command again with --foreground, in a
			// session of its own.
			again := append([]string{"start", name, "--foreground", "--run-dir=" + string(dir)},
				changedArgs(f, append([]string{"net", "forward", "storage", "storage-server", "timeout", "no-reprotect"}, machineFlags()...))...)
			if err := dir.CheckNotRunning(name); err != nil {
				return err
			}
			sup, err := supervisor.Detach(dir, exe, again)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 3*timeout+10*time.Second)
			defer cancel()
			if err := sup.WaitProtected(ctx); err != nil {
				// A start that failed or was interrupted leaves nothing
				// running: the supervisor stops what it started.
				sup.Stop(time.Minute)
				return err
			}
			printWatchHints(out, name, dir, sup.PID)
			return nil
		},
	}
	f := cmd.Flags()
	run := newRunCommand().Flags()
	for _, name := range append(machineFlags(), "storage") {
		f.AddFlag(run.Lookup(name))
	}
	f.StringVar(&storageSrv, "storage-server", "", "the socket of a running 'ftctl storage serve' that owns the disks and the arbiter record; default: start one in the run directory (serving --storage); 'none': each side opens the disks itself, the arbiter record in the run directory, no fencing")
	f.StringVar(&netSock, "net", "", "attach both sides to this running switch's socket ('ftctl net serve') instead of starting one in the run directory")
	f.StringArrayVar(&forwards, "forward", nil, "expose a guest TCP port through the switch ftctl start starts, HOST:PORT=GUEST:PORT (repeatable)")
	f.BoolVar(&foreground, "foreground", false, "stay attached: run the supervisor in this process until both sides exit or Ctrl-C (which stops the pair, primary first)")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "give up when a step of the start (switch up, backup listening, pair protected) takes longer")
	f.BoolVar(&noReprot, "no-reprotect", false, "after a failover leave the survivor unprotected; by default the supervisor starts a new backup and the survivor copies its running guest there (the guest pauses only for the last round) and is the primary of a new pair")
	addRunDirFlag(f)
	return cmd
}

func exactlyOneName(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("give the pair's NAME (one argument, got %d): e.g. 'ftctl %s kv'", len(args), cmd.Name())
	}
	return nil
}

func printWatchHints(w io.Writer, name string, dir supervisor.RunDir, supervisorPID int) {
	fmt.Fprintf(w, `ftctl: pair %[1]s is protected (supervisor pid %[3]d, run directory %[2]s)
  both sides:  ftctl status %[1]s
  console:     tail -f %[4]s
  metrics:     curl -s --unix-socket %[5]s http://ftvm/metrics
  fail over:   ftctl failover %[1]s --kill
  stop:        ftctl stop %[1]s
`, name, dir, supervisorPID, dir.ConsoleFile(supervisor.Primary), dir.Control(supervisor.Primary))
}

func newStatusCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status [NAME] [-o text|json]",
		Short: "Show the state of the pairs on this host, side by side",
		Long: `Ask both sides of a pair started with 'ftctl start' (their control
sockets in the run directory) and print per side: role, phase (protected,
unprotected, backup-lost, replaying, failing-over, live, halted, stopped) with
the side's own account of why, the arbiter generation, the backup's replay
lag, the outputs the primary holds until the backup has their log, the log
rate and the digests logged (primary) or matched (backup); then the last
failover's timeline. A side whose control socket does not answer is "gone".
Without NAME, every pair with a run directory under the default location.

Exit status: 0 when a side of each pair shown answered; 3 when no side of a
pair answers (it is not running); 1 when there is no such pair.`,
		Example: `  ftctl status kv
  ftctl status kv -o json | jq .backup.status.lag_seconds
  ftctl status`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			var names []string
			var dirs []supervisor.RunDir
			if len(args) == 1 {
				dir, err := existingRunDir(cmd, args[0])
				if err != nil {
					return err
				}
				names, dirs = args, []supervisor.RunDir{dir}
			} else {
				parent, err := supervisor.DefaultParent()
				if err != nil {
					return err
				}
				if names, err = supervisor.List(parent); err != nil {
					return err
				}
				if len(names) == 0 {
					return fmt.Errorf("no pairs under %s; start one with 'ftctl start NAME --image DIR'", parent)
				}
				for _, n := range names {
					dirs = append(dirs, supervisor.RunDir(filepath.Join(parent, n)))
				}
			}
			var all []supervisor.PairStatus
			down := 0
			for i, name := range names {
				ps := supervisor.Read(cmd.Context(), name, dirs[i])
				if ps.Primary.Status == nil && ps.Backup.Status == nil {
					down++
				}
				all = append(all, ps)
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				var v any = all
				if len(args) == 1 {
					v = all[0]
				}
				if err := enc.Encode(v); err != nil {
					return err
				}
			} else {
				for _, ps := range all {
					ps.WriteText(out)
				}
			}
			if down > 0 {
				return &exitError{code: 3, err: fmt.Errorf("%d of %d pairs shown have no side answering (not running; 'ftctl start' them, or 'ftctl stop' to clean up)", down, len(all))}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	addRunDirFlag(cmd.Flags())
	return cmd
}

func newFailoverCommand() *cobra.Command {
	var (
		kill, planned bool
		timeout       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "failover NAME (--kill | --planned)",
		Short: "Fail a pair over to its backup: kill the primary, or hand the guest over, and watch the backup go live",
		Long: `--kill sends SIGKILL to the pair's primary process (the demo of a host
dying: no clean close of the log channel). --planned asks the primary for a
switchover (SIGUSR2): it stops its VM at an exit, waits until the backup has
acknowledged the whole log and every output has left, and hands the guest
over; nothing is lost and the primary exits 0.

Either way ftctl then waits until the backup reports itself live and prints
the timeline: the signal, the primary found lost (--kill: by the backup's
failure detector; --planned: the handover entry arrived), log drained (the
backup replayed everything it received), arbiter record claimed, live (disks
open, writes re-issued, NIC attached and announced). Clients of the guest see
a pause, not an error. The pair then runs unprotected on the former backup.

Exit status: 0 when the backup went live; 1 when there is no primary, the
pair is not protected (nothing is signalled then: without a replaying backup
a kill would stop the guest for good), or the backup halted or did not go
live within --timeout.`,
		Example: `  ftctl failover kv --kill
  ftctl failover kv --planned
  ftctl status kv`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			sig, what := syscall.SIGKILL, "killed"
			switch {
			case planned && kill:
				return errors.New("give one of --kill and --planned")
			case planned:
				sig, what = syscall.SIGUSR2, "asked for a handover from"
			case !kill:
				return errors.New("say how: --kill (SIGKILL the primary) or --planned (the primary hands the guest over); the backup goes live either way")
			}
			dir, err := existingRunDir(cmd, args[0])
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			ps := supervisor.Read(ctx, args[0], dir)
			if b := ps.Backup.Status; b == nil || b.Phase != "replaying" {
				state := ps.Backup.Err
				if b != nil {
					state = b.State
				}
				return fmt.Errorf("the backup is not replaying (%s): nothing could take over; the primary is left alone (see 'ftctl status %s')", state, args[0])
			}
			// A primary that is not replicating yet has no handler for
			// SIGUSR2 (it would die of it), and is not handing anything
			// over.
			if p := ps.Primary.Status; planned && (p == nil || p.Phase != "protected") {
				state := ps.Primary.Err
				if p != nil {
					state = p.State
				}
				return fmt.Errorf("the primary is not replicating (%s): no switchover to plan (see 'ftctl status %s')", state, args[0])
			}
			pid, at, err := supervisor.SignalPrimary(dir, sig)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "ftctl: %s the primary (pid %d) at %s; waiting for the backup to go live\n", what, pid, at.Format("15:04:05.000"))
			wctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			st, err := supervisor.WaitPhase(wctx, dir, supervisor.Backup, "live", "halted", "stopped")
			if err != nil {
				return err
			}
			if f := st.Failover; f != nil {
				fmt.Fprintf(out, "ftctl: backup live, generation %d: primary found lost +%d ms after the signal (%s), then log drained +%.0f ms, record claimed +%.0f ms, live +%.0f ms; %d disk writes re-issued, %d frames sent again\n",
					st.Generation, f.PrimaryLost.Sub(at).Milliseconds(), f.Why, f.DrainedMS, f.ClaimedMS, f.LiveMS, f.RewrittenWrites, f.ResentFrames)
			} else {
				fmt.Fprintf(out, "ftctl: backup live: %s\n", st.State)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&kill, "kill", false, "SIGKILL the primary (the demo: no clean close)")
	f.BoolVar(&planned, "planned", false, "a switchover that loses nothing: the primary stops at an exit and hands the guest over once the backup has everything")
	f.DurationVar(&timeout, "timeout", time.Minute, "give up when the backup is not live this long after the signal")
	addRunDirFlag(f)
	return cmd
}

func newStopCommand() *cobra.Command {
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Stop a pair started with 'ftctl start'",
		Long: `Send SIGTERM to the pair's primary and wait for it (its log channel closes
cleanly, so the backup stops too instead of going live), then the backup, the
switch ftctl start started and the supervisor; a process still running after
--grace gets SIGKILL. Then remove the run directory's sockets and pid files;
the logs, consoles and arbiter record stay.

Exit status: 0 when nothing of the pair runs any more (also when nothing
ran); 1 when a process could not be stopped or a file not removed.`,
		Example: `  ftctl stop kv`,
		Args:    exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := existingRunDir(cmd, args[0])
			if err != nil {
				return err
			}
			stopped, err := supervisor.Stop(cmd.Context(), dir, grace)
			out := cmd.OutOrStdout()
			for _, s := range stopped {
				fmt.Fprintf(out, "ftctl: stopped the %s\n", s)
			}
			if err != nil {
				return err
			}
			if len(stopped) == 0 {
				fmt.Fprintf(out, "ftctl: pair %s was not running; cleaned %s\n", args[0], dir)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 15*time.Second, "how long each process has to stop on SIGTERM before SIGKILL")
	addRunDirFlag(cmd.Flags())
	return cmd
}
