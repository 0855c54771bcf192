package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestStartHandsTheMachineFlagsOn(t *testing.T) {
	cmd := newStartCommand()
	f := cmd.Flags()
	if err := f.Parse([]string{"kv", "--image", "out/image", "--disk", "a", "--disk", "b", "--mem", "512",
		"--append", "-x ftvm.workload=kv", "--peer-timeout", "500ms", "--forward", "7000=7000"}); err != nil {
		t.Fatal(err)
	}
	got := changedArgs(f, machineFlags())
	want := []string{"--image=out/image", "--append=-x ftvm.workload=kv", "--mem=512", "--disk=a", "--disk=b", "--peer-timeout=500ms"}
	if !slices.Equal(got, want) {
		t.Fatalf("machine args\n got %q\nwant %q", got, want)
	}
	// What the children get parses back to the same values in ftctl run.
	run := newRunCommand()
	if err := run.Flags().Parse(got); err != nil {
		t.Fatalf("ftctl run rejects %q: %v", got, err)
	}
	if d, _ := run.Flags().GetDuration("peer-timeout"); d != 500*time.Millisecond {
		t.Errorf("peer-timeout arrived as %v", d)
	}
	if disks, _ := run.Flags().GetStringArray("disk"); !slices.Equal(disks, []string{"a", "b"}) {
		t.Errorf("disks arrived as %q", disks)
	}
}

func TestPairCommandsNameTheBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"start", "kv", "--run-dir", dir}, "--image DIR"},
		{[]string{"start", "../kv", "--image", "x"}, `pair name "../kv"`},
		{[]string{"start", "--image", "x"}, "give the pair's NAME"},
		{[]string{"start", "kv", "--image", "x", "--net", "n.sock", "--forward", "1=1"}, "--forward configures the switch"},
		{[]string{"start", "kv", "--image", "x", "--storage", "d", "--storage-server", "s.sock"}, "with --storage-server SOCK"},
		{[]string{"status", "nosuch", "--run-dir", dir + "/nosuch"}, `no pair "nosuch" on this host`},
		{[]string{"status", "kv", "-o", "yaml"}, `-o "yaml"`},
		{[]string{"failover", "kv", "--planned", "--kill"}, "one of --kill and --planned"},
		{[]string{"failover", "kv"}, "--kill"},
		{[]string{"failover", "kv", "--kill", "--run-dir", dir}, "the backup is not replaying (gone)"},
		{[]string{"failover", "kv", "--planned", "--run-dir", dir}, "the backup is not replaying (gone)"},
		{[]string{"stop", "nosuch", "--run-dir", dir + "/nosuch"}, `no pair "nosuch"`},
		{[]string{"protect", "--control", "x.sock"}, "--backup ADDR is required"},
		{[]string{"protect", "--backup", "unix:/b.sock"}, "give a pair's NAME or --control SOCK"},
		{[]string{"protect", "kv", "--control", "x.sock", "--backup", "unix:/b.sock"}, "not both"},
		{[]string{"protect", "--control", dir + "/none.sock", "--backup", "unix:/b.sock"}, "gone"},
		{[]string{"snapshot", "kv", "--control", "x.sock", "/tmp/x.snap"}, "not both"},
		{[]string{"snapshot", "/tmp/x.snap"}, "give a pair's NAME or --control SOCK"},
		{[]string{"snapshot", "--control", dir + "/none.sock", "/tmp/x.snap"}, "gone"},
		{[]string{"run", "--image", "x", "--protect-again"}, "--protect-again is for --role primary"},
		{[]string{"run", "--image", "x", "--resync"}, "--resync is for --role backup"},
		{[]string{"run", "--image", "x", "--protect-to", "unix:/b.sock"}, "--protect-to is for --role backup"},
	} {
		stderr, err := runFtctlTimeout(t, 10*time.Second, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ftctl %s: %v (stderr %q), want an error with %q", strings.Join(c.args, " "), err, stderr, c.want)
		}
	}
}

func TestStatusOfAStoppedPairExits3(t *testing.T) {
	dir := t.TempDir()
	_, err := runFtctlTimeout(t, 10*time.Second, "status", "kv", "--run-dir", dir)
	if exitCode(err) != 3 || !strings.Contains(err.Error(), "no side answering") {
		t.Fatalf("status of a pair with nothing running: exit %d, %v", exitCode(err), err)
	}
	stderr, err := runFtctlTimeout(t, 10*time.Second, "stop", "kv", "--run-dir", dir)
	if err != nil {
		t.Fatalf("stop of a stopped pair: %v (%s)", err, stderr)
	}
}

// A bad --control path fails before a VM is built, naming the flag.
func TestRunControlFlag(t *testing.T) {
	img := imageWithWorkloads(t, "kv", "none")
	dir := t.TempDir()
	_, err := runFtctlTimeout(t, 30*time.Second, "run", "--image", img, "--console", "none", "--role", "backup",
		"--listen", "unix:"+dir+"/log.sock", "--control", dir+"/no/such/dir/backup.sock")
	if err == nil || !strings.Contains(err.Error(), "--control") || !strings.Contains(err.Error(), "no/such/dir") {
		t.Fatalf("run with a bad --control: %v, want an error naming --control and the path", err)
	}
}
