package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var dbDone = regexp.MustCompile(`ftvm-guest db done txns=(\d+) fsyncs=(\d+) digest=([0-9a-f]{16}) `)

// TestDBCommitsDurably runs the db workload twice on a fresh directory: it
// prints the same digest both times (the pair and the guest alone are
// compared by it), fsyncs every commit and checkpoint, and leaves the table
// it reports on disk, with an empty log behind the last checkpoint.
func TestDBCommitsDurably(t *testing.T) {
	var digests []string
	for range 2 {
		dir := t.TempDir()
		var out bytes.Buffer
		cfg := Config{Workload: "db", DataDir: dir, Params: map[string]string{"txns": "250", "work": "3"}}
		if err := dbWorkload(context.Background(), cfg, &out); err != nil {
			t.Fatalf("db: %v\n%s", err, out.String())
		}
		m := dbDone.FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("no done line in:\n%s", out.String())
		}
		// 250 commits, checkpoints after 100, 200 and the last: 2 fsyncs each.
		if m[1] != "250" || m[2] != "256" {
			t.Fatalf("done line says txns=%s fsyncs=%s, want 250 and 256", m[1], m[2])
		}
		if n := strings.Count(out.String(), "ftvm-guest db txns="); n != 9 {
			t.Fatalf("%d progress lines, want 9 (every tenth but the last):\n%s", n, out.String())
		}
		table, err := os.ReadFile(filepath.Join(dir, dbTableName))
		if err != nil {
			t.Fatal(err)
		}
		if len(table) != dbSlots*dbSlotSize || bytes.Equal(table, make([]byte, len(table))) {
			t.Fatalf("table on disk: %d bytes, all zero %v", len(table), bytes.Equal(table, make([]byte, len(table))))
		}
		if fi, err := os.Stat(filepath.Join(dir, dbLogName)); err != nil || fi.Size() != 0 {
			t.Fatalf("log after the last checkpoint: %v, %v", fi, err)
		}
		digests = append(digests, m[3])
	}
	if digests[0] != digests[1] {
		t.Fatalf("two runs with the same parameters printed digests %s and %s", digests[0], digests[1])
	}
}

// TestDBLogsEachCommit: between checkpoints the log holds one record per
// transaction, each naming its transaction.
func TestDBLogsEachCommit(t *testing.T) {
	dir := t.TempDir()
	d, err := openDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.close()
	for n := uint64(1); n <= 7; n++ {
		if err := d.commit(n, 1); err != nil {
			t.Fatal(err)
		}
	}
	wal, err := os.ReadFile(filepath.Join(dir, dbLogName))
	if err != nil {
		t.Fatal(err)
	}
	if len(wal) != 7*dbRecordSize {
		t.Fatalf("log is %d bytes, want 7 records of %d", len(wal), dbRecordSize)
	}
	for i := range 7 {
		if got := wal[i*dbRecordSize]; got != byte(i+1) {
			t.Fatalf("record %d names transaction %d", i, got)
		}
	}
}

func TestDBRefusesBadInput(t *testing.T) {
	for _, c := range []struct {
		params  map[string]string
		dataDir string
		want    string
	}{
		{map[string]string{"txns": "0"}, "x", `ftvm.txns="0"`},
		{map[string]string{"work": "many"}, "x", `ftvm.work="many"`},
		{nil, "", "no data disk"},
	} {
		err := dbWorkload(context.Background(), Config{Params: c.params, DataDir: c.dataDir}, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one naming %s", c.params, err, c.want)
		}
	}
}

// TestCPURoundsIsFixedWork: with ftvm.rounds the cpu workload does exactly
// that many rounds and its digest depends only on them.
func TestCPURoundsIsFixedWork(t *testing.T) {
	run := func(rounds string) string {
		var out bytes.Buffer
		if err := cpuWorkload(context.Background(), Config{Params: map[string]string{"rounds": rounds}}, &out); err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`ftvm-guest cpu done rounds=(\d+) digest=([0-9a-f]+)`).FindStringSubmatch(out.String())
		if m == nil || m[1] != rounds {
			t.Fatalf("rounds=%s printed:\n%s", rounds, out.String())
		}
		return m[2]
	}
	a, b, c := run("50"), run("50"), run("51")
	if a != b || a == c {
		t.Fatalf("digests: 50 rounds %s and %s, 51 rounds %s", a, b, c)
	}
	if err := cpuWorkload(context.Background(), Config{Params: map[string]string{"rounds": "-1"}}, &bytes.Buffer{}); err == nil {
		t.Fatal("rounds=-1 accepted")
	}
}
