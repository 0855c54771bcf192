package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	storageserver "github.com/ftvm/ftvm/storage/server"
)

func runStorage(ctx context.Context, args ...string) (string, error) {
	cmd := newStorageCommand()
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// TestStorageServe runs the server as the command does, claims through it
// and reads the record back with "ftctl storage record".
func TestStorageServe(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "run", "storage.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() {
		_, err := runStorage(ctx, "serve", "--dir", filepath.Join(dir, "disks"), "--socket", socket, "--tcp", "127.0.0.1:0")
		served <- err
	}()
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			break
		} else if i == 500 {
			t.Fatalf("storage server did not listen: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := storageserver.Dial(ctx, "unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Claim(ctx, "kv", "backup on host b", 0); err != nil {
		t.Fatal(err)
	}
	out, err := runStorage(ctx, "record", "kv", "--socket", socket)
	if err != nil || !strings.Contains(out, "generation:  1\n") || !strings.Contains(out, "owner:       backup on host b\n") {
		t.Fatalf("record: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "disks", "arbiter", "kv")); err != nil {
		t.Fatalf("the record is not in the storage directory: %v", err)
	}
	if _, err := runStorage(ctx, "serve", "--dir", dir, "--socket", socket); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second server on the same socket: %v", err)
	}
	if _, err := runStorage(ctx, "serve", "--dir", dir); err == nil || !strings.Contains(err.Error(), "--socket is required") {
		t.Fatalf("serve without --socket: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}
