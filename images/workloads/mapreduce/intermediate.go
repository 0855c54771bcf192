package mapreduce

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Intermediate files hold one JSON object per pair ({"k":..,"v":..}),
// one per line. A reducer reads them from other machines, so decoding
// checks every record and bounds the size.

// MaxIntermediate bounds one intermediate file a reducer fetches.
const MaxIntermediate = 256 << 20

func encodeIntermediate(kvs []KeyValue) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, kv := range kvs {
		enc.Encode(kv) // cannot fail for a struct of strings
	}
	return b.Bytes()
}

// decodeIntermediate reads pairs until EOF.
func decodeIntermediate(r io.Reader) ([]KeyValue, error) {
	dec := json.NewDecoder(io.LimitReader(r, MaxIntermediate+1))
	dec.DisallowUnknownFields()
	var kvs []KeyValue
	for {
		var kv KeyValue
		err := dec.Decode(&kv)
		if errors.Is(err, io.EOF) {
			return kvs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decode intermediate pair %d: %w", len(kvs)+1, err)
		}
		if dec.InputOffset() > MaxIntermediate {
			return nil, fmt.Errorf("intermediate file exceeds %d bytes", MaxIntermediate)
		}
		kvs = append(kvs, kv)
	}
}

func intermediateName(mapTask, reduceTask int) string {
	return fmt.Sprintf("mr-%d-%d", mapTask, reduceTask)
}

// OutputName is reduce task r's output file.
func OutputName(r int) string { return fmt.Sprintf("mr-out-%d", r) }

// writeAtomic writes path so that readers see the old file or the whole
// new one: temporary file in the same directory, fsync, rename, and the
// directory fsync'd so the rename survives a crash.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	return nil
}
