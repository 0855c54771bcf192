package replication

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/ftvm/ftvm/instance"
	"github.com/ftvm/ftvm/snapshot"
)

// startSnapshot checks the full snapshot at path, a pair's starting point
// (fast start), against this side's machine and reads it through to its
// end: it returns its Sum, which the start header names so the backup
// refuses a pair half started from another snapshot.
func startSnapshot(path string, cfg instance.Config) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("start from a snapshot: %w", err)
	}
	defer f.Close()
	r, err := snapshot.NewReader(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return "", fmt.Errorf("start from snapshot %s: %w", path, err)
	}
	if r.Meta().Kind != snapshot.Full {
		return "", fmt.Errorf("start from snapshot %s: a %v snapshot; a pair starts from a full one", path, r.Meta().Kind)
	}
	own, err := instance.Identity(cfg)
	if err != nil {
		return "", err
	}
	if err := r.Meta().Identity.Check(&own); err != nil {
		return "", fmt.Errorf("start from snapshot %s: %w; give both sides the machine options the snapshot was taken with", path, err)
	}
	for {
		if _, err := r.Next(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", fmt.Errorf("start from snapshot %s: %w", path, err)
		}
	}
	sum, _ := r.Sum()
	return sum.String(), nil
}

// restoreStart loads the snapshot at path into inst, created and not yet
// run, and checks it is still the one named want.
func restoreStart(inst *instance.Instance, path, want string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("start from a snapshot: %w", err)
	}
	defer f.Close()
	sum, err := inst.Restore(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return fmt.Errorf("start from snapshot %s: %w", path, err)
	}
	if sum.String() != want {
		return fmt.Errorf("start from snapshot %s: it changed since it was checked (sha256 %.12s, then %.12s)", path, sum, want)
	}
	return nil
}
