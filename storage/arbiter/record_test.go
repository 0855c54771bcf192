package arbiter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDirDamagedRecord: a generation file whose content is torn still
// holds its generation; only the owner is unknown.
func TestDirDamagedRecord(t *testing.T) {
	d, err := OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Claim(ctx, "p", "backup", 0); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(d.Root(), "p", genName(1))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := d.Read(ctx, "p")
	if err != nil || r.Generation != 1 || r.Owner != "" || r.Damaged == "" {
		t.Fatalf("torn record reads as %v, %v", r, err)
	}
	if _, err := d.Claim(ctx, "p", "primary", 0); !errors.Is(err, ErrLostClaim) || !strings.Contains(err.Error(), "owner unreadable") {
		t.Fatalf("claim over a torn record: %v", err)
	}
	if r, err := d.Claim(ctx, "p", "primary", 1); err != nil || r.Generation != 2 {
		t.Fatalf("claim past a torn record: %v, %v", r, err)
	}
}

func TestRecordRoundTrip(t *testing.T) {
	r := Record{Pair: "kv", Generation: 7, Owner: "backup host-b pid 42", Claimed: time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)}
	b, err := encodeRecord(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeRecord(b, "kv", 7)
	if err != nil || got != r {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	for name, mutate := range map[string]func([]byte) []byte{
		"cut":        func(b []byte) []byte { return b[:len(b)-3] },
		"bit flip":   func(b []byte) []byte { b[10] ^= 1; return b },
		"no crc":     func(b []byte) []byte { return b[:strings.IndexByte(string(b), '\n')] },
		"extra line": func(b []byte) []byte { return append(b, "x\n"...) },
	} {
		if _, err := decodeRecord(mutate(append([]byte(nil), b...)), "kv", 7); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	if _, err := decodeRecord(b, "kv", 8); err == nil {
		t.Error("a record stored at the wrong generation decoded")
	}
	if _, err := decodeRecord(b, "other", 7); err == nil {
		t.Error("a record of another pair decoded")
	}
}

func FuzzDecodeRecord(f *testing.F) {
	good, _ := encodeRecord(Record{Pair: "kv", Generation: 3, Owner: "primary", Claimed: time.Unix(1, 0)})
	f.Add(good, uint64(3))
	f.Add([]byte("{}\ncrc32c 00000000\n"), uint64(0))
	f.Add([]byte(fmt.Sprintf("%s\ncrc32c zzzzzzzz\n", good)), uint64(3))
	f.Fuzz(func(t *testing.T, data []byte, gen uint64) {
		r, err := decodeRecord(data, "kv", gen)
		if err != nil {
			return
		}
		if r.Pair != "kv" || r.Generation != gen || ValidateOwner(r.Owner) != nil {
			t.Fatalf("decoded an invalid record %+v", r)
		}
		again, err := encodeRecord(r)
		if err != nil {
			t.Fatal(err)
		}
		if r2, err := decodeRecord(again, "kv", gen); err != nil || r2 != r {
			t.Fatalf("re-encoded record reads back as %v, %v", r2, err)
		}
	})
}
