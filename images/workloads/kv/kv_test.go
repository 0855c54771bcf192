package kv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range []Record{
		{Seq: 1, Key: []byte("k"), Value: []byte("v")},
		{Seq: 1 << 40, Key: []byte("key with\nnewline"), Value: nil},
		{Seq: 7, Key: []byte("x"), Value: bytes.Repeat([]byte{0, 0xff}, 1000)},
	} {
		b := AppendRecord([]byte("prefix"), r)[len("prefix"):]
		if len(b) != r.EncodedSize() {
			t.Fatalf("encoded %d bytes, EncodedSize %d", len(b), r.EncodedSize())
		}
		got, n, err := DecodeRecord(append(b, "trailing"...))
		if err != nil || n != len(b) || got.Seq != r.Seq || !bytes.Equal(got.Key, r.Key) || !bytes.Equal(got.Value, r.Value) {
			t.Fatalf("decode: %+v n=%d err=%v", got, n, err)
		}
	}
}

func TestDecodeRecordErrors(t *testing.T) {
	good := AppendRecord(nil, Record{Seq: 1, Key: []byte("key"), Value: []byte("value")})
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 1; return b }
	for name, tc := range map[string]struct {
		b    []byte
		want error
		n    int
	}{
		"empty":          {nil, ErrTruncated, 0},
		"short header":   {good[:5], ErrTruncated, 0},
		"short payload":  {good[:len(good)-1], ErrTruncated, len(good)},
		"zero length":    {make([]byte, 20), ErrCorrupt, 0},
		"huge length":    {[]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, ErrCorrupt, 0},
		"bad crc":        {flip(4), ErrCorrupt, len(good)},
		"flipped value":  {flip(len(good) - 1), ErrCorrupt, len(good)},
		"key beyond end": {AppendRecord(nil, Record{Seq: 1, Key: []byte("k")})[:0], ErrTruncated, 0},
	} {
		_, n, err := DecodeRecord(tc.b)
		if !errors.Is(err, tc.want) || n != tc.n {
			t.Errorf("%s: n=%d err=%v, want n=%d %v", name, n, err, tc.n, tc.want)
		}
	}
	// A key length larger than the payload, with a valid checksum.
	b := AppendRecord(nil, Record{Seq: 1, Key: []byte("k"), Value: []byte("v")})
	b[16] = 9
	b = fixCRC(b)
	if _, _, err := DecodeRecord(b); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "key length") {
		t.Errorf("key length beyond payload: %v", err)
	}
}

// fixCRC recomputes the checksum of a hand-edited record.
func fixCRC(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[headerSize:], castagnoli))
	return b
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(AppendRecord(nil, Record{Seq: 1, Key: []byte("k"), Value: []byte("v")}))
	f.Add(AppendRecord(nil, Record{Seq: 2, Key: []byte("key"), Value: nil}))
	f.Add([]byte{})
	f.Add(make([]byte, 20))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := DecodeRecord(b)
		if err != nil {
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is neither ErrTruncated nor ErrCorrupt", err)
			}
			if errors.Is(err, ErrTruncated) && n > 0 && n <= len(b) {
				t.Fatalf("truncated with n=%d <= len %d", n, len(b))
			}
			return
		}
		if n < headerSize+minPayload || n > len(b) {
			t.Fatalf("n=%d for %d bytes", n, len(b))
		}
		// A record that decodes is exactly what encoding it gives back.
		if enc := AppendRecord(nil, r); !bytes.Equal(enc, b[:n]) {
			t.Fatalf("re-encoding differs:\n%x\n%x", enc, b[:n])
		}
	})
}

func openT(t *testing.T, path string) (*Store, Recovery) {
	t.Helper()
	s, rec, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, rec
}

func TestStoreReplay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kv.log")
	s, rec := openT(t, path)
	if rec.Records != 0 || rec.TornBytes != 0 {
		t.Fatalf("new log: %+v", rec)
	}
	for i := range 10 {
		seq, err := s.Put([]byte(fmt.Sprintf("k%d", i%4)), []byte(fmt.Sprintf("v%d", i)))
		if err != nil || seq != uint64(i+1) {
			t.Fatalf("put %d: seq %d %v", i, seq, err)
		}
	}
	s.Close()
	s2, rec := openT(t, path)
	if rec.Records != 10 || rec.TornBytes != 0 {
		t.Fatalf("reopen: %+v", rec)
	}
	if v, ok := s2.Get([]byte("k1")); !ok || string(v) != "v9" {
		t.Fatalf("k1 = %q %v", v, ok)
	}
	if seq, err := s2.Put([]byte("new"), []byte("x")); err != nil || seq != 11 {
		t.Fatalf("put after replay: %d %v", seq, err)
	}
	if st := s2.Stats(); st.Keys != 5 || st.Seq != 11 || !st.Durable {
		t.Fatalf("stats %+v", st)
	}
}

// TestTornTail cuts or damages the last record in every way a crash can
// and checks that Open keeps exactly the records before it.
func TestTornTail(t *testing.T) {
	var log []byte
	for i := 1; i <= 3; i++ {
		log = AppendRecord(log, Record{Seq: uint64(i), Key: []byte("k"), Value: []byte(fmt.Sprintf("value%d", i))})
	}
	last := AppendRecord(nil, Record{Seq: 4, Key: []byte("k"), Value: []byte("torn")})
	damagedLast := bytes.Clone(last)
	damagedLast[len(damagedLast)-1] ^= 0xff
	for name, tail := range map[string][]byte{
		"header cut":   last[:3],
		"payload cut":  last[:len(last)-2],
		"bad checksum": damagedLast,
		"zeros":        make([]byte, 100),
		"header zeros": append(bytes.Clone(last[:headerSize]), make([]byte, 30)...),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kv.log")
			if err := os.WriteFile(path, append(bytes.Clone(log), tail...), 0o644); err != nil {
				t.Fatal(err)
			}
			s, rec := openT(t, path)
			if rec.Records != 3 || rec.TornBytes != int64(len(tail)) || rec.TornReason == "" {
				t.Fatalf("recovery %+v", rec)
			}
			if v, _ := s.Get([]byte("k")); string(v) != "value3" {
				t.Fatalf("k = %q", v)
			}
			if fi, _ := os.Stat(path); fi.Size() != int64(len(log)) {
				t.Fatalf("log not truncated: %d bytes", fi.Size())
			}
			if seq, err := s.Put([]byte("k"), []byte("after")); err != nil || seq != 4 {
				t.Fatalf("put after recovery: %d %v", seq, err)
			}
			s.Close()
			s, rec = openT(t, path)
			if v, _ := s.Get([]byte("k")); rec.Records != 4 || rec.TornBytes != 0 || string(v) != "after" {
				t.Fatalf("second reopen: %+v %q", rec, v)
			}
		})
	}
}

// TestCorruptMiddle: damage before the last record is not a torn write,
// and Open must refuse rather than drop acknowledged records.
func TestCorruptMiddle(t *testing.T) {
	var log []byte
	for i := 1; i <= 3; i++ {
		log = AppendRecord(log, Record{Seq: uint64(i), Key: []byte("k"), Value: []byte("v")})
	}
	for name, mutate := range map[string]func([]byte){
		"checksum": func(b []byte) { b[headerSize+2] ^= 1 },
		"length":   func(b []byte) { b[3] = 0x7f },
		"seq": func(b []byte) {
			b[headerSize] = 9
			copy(b, AppendRecord(nil, Record{Seq: 9, Key: []byte("k"), Value: []byte("v")}))
		},
	} {
		b := bytes.Clone(log)
		mutate(b)
		path := filepath.Join(t.TempDir(), "kv.log")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, err := Open(path); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Open = %v, want ErrCorrupt", name, err)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, b) {
			t.Errorf("%s: Open modified a corrupt log", name)
		}
	}
}

func TestHandle(t *testing.T) {
	s := NewServer(OpenMemory())
	for _, tc := range []struct{ in, want string }{
		{"GET a", "NOTFOUND\n"},
		{"PUT a hello world", "OK 1\n"},
		{"GET a", "VALUE hello world\n"},
		{"PUT a ", "OK 2\n"},
		{"GET a", "VALUE \n"},
		{"PUT a", "ERR usage: PUT <key> <value>\n"},
		{"PUT  v", "ERR usage: PUT <key> <value>\n"},
		{"GET", "ERR usage: GET <key>\n"},
		{"GET a b", "ERR usage: GET <key>\n"},
		{"ECHO  two  spaces ", " two  spaces \n"},
		{"ECHO", "\n"},
		{"ECHO \r", "\r\n"},
		{"STATS", "STATS keys=1 seq=2 log_bytes=0 store=memory conns=0 requests=13\n"},
		{"get a", "ERR unknown command \"get\" (have PUT, GET, ECHO, STATS)\n"},
		{"", "ERR unknown command \"\" (have PUT, GET, ECHO, STATS)\n"},
	} {
		var out bytes.Buffer
		s.Handle(&out, []byte(tc.in))
		if out.String() != tc.want {
			t.Errorf("%q -> %q, want %q", tc.in, out.String(), tc.want)
		}
	}
}

// startServer serves a store on a real TCP port of 127.0.0.1.
func startServer(t *testing.T, store *Store) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(store).Serve(ctx, ln) }()
	return ln.Addr().String(), func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
}

type client struct {
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{c, bufio.NewReader(c)}
}

func (c *client) do(req string) (string, error) {
	if _, err := c.c.Write([]byte(req + "\n")); err != nil {
		return "", err
	}
	return c.r.ReadString('\n')
}

func TestServerTCP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kv.log")
	store, _ := openT(t, path)
	addr, stop := startServer(t, store)

	// Many clients at once, each writing its own keys and echoing.
	const clients, per = 16, 50
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			c := dial(t, addr)
			for j := range per {
				key, val := fmt.Sprintf("c%d-k%d", i, j), fmt.Sprintf("value %d/%d", i, j)
				if got, err := c.do("PUT " + key + " " + val); err != nil || !strings.HasPrefix(got, "OK ") {
					errs <- fmt.Errorf("PUT %s: %q %v", key, got, err)
					return
				}
				if got, err := c.do("GET " + key); err != nil || got != "VALUE "+val+"\n" {
					errs <- fmt.Errorf("GET %s: %q %v", key, got, err)
					return
				}
				echo := fmt.Sprintf("echo\x00\xff %d %d", i, j)
				if got, err := c.do("ECHO " + echo); err != nil || got != echo+"\n" {
					errs <- fmt.Errorf("ECHO: %q %v", got, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Pipelining: many requests in one write, replies in order.
	c := dial(t, addr)
	var req strings.Builder
	for i := range 100 {
		fmt.Fprintf(&req, "ECHO %d\n", i)
	}
	if _, err := c.c.Write([]byte(req.String())); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if got, err := c.r.ReadString('\n'); err != nil || got != fmt.Sprintf("%d\n", i) {
			t.Fatalf("pipelined reply %d: %q %v", i, got, err)
		}
	}
	if got, _ := c.do("STATS"); !strings.HasPrefix(got, fmt.Sprintf("STATS keys=%d seq=%d ", clients*per, clients*per)) || !strings.Contains(got, "store=disk") {
		t.Fatalf("STATS: %q", got)
	}

	// A line longer than MaxLine closes the connection after an error.
	long := dial(t, addr)
	go long.c.Write([]byte(strings.Repeat("x", MaxLine+10) + "\n"))
	if got, _ := long.r.ReadString('\n'); !strings.HasPrefix(got, "ERR line too long") {
		t.Fatalf("long line: %q", got)
	}

	// Shutdown closes idle connections and returns nil.
	idle := dial(t, addr)
	stop()
	idle.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.r.ReadByte(); err == nil {
		t.Fatal("connection still open after shutdown")
	}

	// Every acknowledged PUT is in the log.
	store.Close()
	again, rec := openT(t, path)
	if rec.Records != clients*per {
		t.Fatalf("replayed %d records, want %d", rec.Records, clients*per)
	}
	if v, ok := again.Get([]byte("c3-k7")); !ok || string(v) != "value 3/7" {
		t.Fatalf("after replay c3-k7 = %q", v)
	}
}

func TestPutLimits(t *testing.T) {
	s := OpenMemory()
	if _, err := s.Put(nil, []byte("v")); err == nil {
		t.Error("empty key accepted")
	}
	if _, err := s.Put([]byte("k"), make([]byte, MaxPayload)); err == nil {
		t.Error("oversized record accepted")
	}
	st, _ := openT(t, filepath.Join(t.TempDir(), "kv.log"))
	st.Close()
	if _, err := st.Put([]byte("k"), []byte("v")); err == nil {
		t.Error("put after close accepted")
	}
}
