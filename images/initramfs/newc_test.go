package initramfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// hdr renders a header the way the newc spec lays it out, independently of
// the writer: magic, then ino mode uid gid nlink mtime filesize devmajor
// devminor rdevmajor rdevminor namesize check as 8 upper-case hex digits.
func hdr(ino, mode, nlink, size, rmaj, rmin uint32, name string) string {
	s := "070701"
	for _, v := range []uint32{ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, uint32(len(name) + 1), 0} {
		s += fmt.Sprintf("%08X", v)
	}
	return s + name + "\x00"
}

func TestExactBytes(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.AddFile("/etc/hi", 0o644, []byte("hi\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.AddCharDevice("dev/console", 0o600, 5, 1); err != nil {
		t.Fatal(err)
	}
	if err := w.AddSymlink("bin", "usr/bin"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Header is 110 bytes; header+name is padded to 4, data is padded to 4.
	var exp strings.Builder
	add := func(h string, data string) {
		exp.WriteString(h)
		for exp.Len()%4 != 0 {
			exp.WriteByte(0)
		}
		exp.WriteString(data)
		for exp.Len()%4 != 0 {
			exp.WriteByte(0)
		}
	}
	add(hdr(1, 0o40755, 2, 0, 0, 0, "etc"), "")
	add(hdr(2, 0o100644, 1, 3, 0, 0, "etc/hi"), "hi\n")
	add(hdr(3, 0o40755, 2, 0, 0, 0, "dev"), "")
	add(hdr(4, 0o20600, 1, 0, 5, 1, "dev/console"), "")
	add(hdr(5, 0o120777, 1, 7, 0, 0, "bin"), "usr/bin")
	add(hdr(0, 0, 1, 0, 0, 0, "TRAILER!!!"), "")
	for exp.Len()%512 != 0 {
		exp.WriteByte(0)
	}
	got := buf.String()
	if got != exp.String() {
		t.Fatalf("archive bytes differ:\n got %q\nwant %q", got, exp.String())
	}
	// Independent spot checks of the spec's layout at fixed offsets.
	if got[:6] != "070701" || got[110:114] != "etc\x00" || got[114:116] != "\x00\x00" {
		t.Fatalf("first entry layout wrong: %q", got[:120])
	}
	if got[116:122] != "070701" {
		t.Fatalf("second header does not start at offset 116: %q", got[116:122])
	}
	// Second entry: name "etc/hi\0" ends at 116+117=233, padded to 236, data at 236.
	if got[236:240] != "hi\n\x00" {
		t.Fatalf("data of etc/hi not at offset 236: %q", got[230:244])
	}
	if len(got)%512 != 0 {
		t.Fatalf("archive length %d is not a multiple of 512", len(got))
	}
}

// sample builds an archive exercising every entry kind.
func sample(t testing.TB) []byte {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.AddDir("dev", 0o755))
	must(w.AddCharDevice("dev/console", 0o600, 5, 1))
	must(w.AddFile("init", 0o755, []byte("#!/bin/sh\necho hello\n")))
	must(w.AddFile("lib/modules/6.1/x.ko", 0o644, bytes.Repeat([]byte{0xAB}, 1001)))
	must(w.AddFileFrom("etc/empty", 0o600, strings.NewReader(""), 0))
	must(w.AddSymlink("sbin/init", "../init"))
	must(w.AddDir("tmp", 0o1777))
	must(w.Close())
	return buf.Bytes()
}

// copyArchive reads src and rewrites every entry (and the trailer) verbatim.
func copyArchive(src []byte) (out []byte, consumed int64, names []string, err error) {
	r := NewReader(bytes.NewReader(src))
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, 0, nil, err
		}
		names = append(names, h.Name)
		if err := w.WriteHeader(h); err != nil {
			return nil, 0, nil, fmt.Errorf("rewrite: %w", err)
		}
		if _, err := io.Copy(w, r); err != nil {
			return nil, 0, nil, err
		}
	}
	tr, ok := r.Trailer()
	if !ok {
		return nil, 0, nil, errors.New("no trailer after EOF")
	}
	if err := w.WriteHeader(tr); err != nil {
		return nil, 0, nil, fmt.Errorf("rewrite trailer: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, 0, nil, err
	}
	return buf.Bytes(), r.Offset(), names, nil
}

func TestRoundTrip(t *testing.T) {
	src := sample(t)
	out, consumed, names, err := copyArchive(src)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, src) {
		t.Fatalf("rewritten archive differs (len %d vs %d)", len(out), len(src))
	}
	if consumed%4 != 0 || consumed > int64(len(src)) {
		t.Fatalf("consumed %d of %d", consumed, len(src))
	}
	want := "dev dev/console init lib lib/modules lib/modules/6.1 lib/modules/6.1/x.ko etc etc/empty sbin sbin/init tmp"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("names\n got %s\nwant %s", got, want)
	}
}

func TestReaderData(t *testing.T) {
	r := NewReader(bytes.NewReader(sample(t)))
	found := map[string]Header{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(data)) != int64(h.Size) {
			t.Fatalf("%s: read %d bytes, header says %d", h.Name, len(data), h.Size)
		}
		if h.Name == "sbin/init" && string(data) != "../init" {
			t.Fatalf("symlink target %q", data)
		}
		found[h.Name] = h
	}
	if h := found["dev/console"]; h.Mode != ModeCharDevice|0o600 || h.RDevMajor != 5 || h.RDevMinor != 1 {
		t.Fatalf("dev/console: %+v", h)
	}
	if h := found["tmp"]; !h.IsDir() || h.FileMode().Perm() != 0o777 || h.Mode&ModeSticky == 0 {
		t.Fatalf("tmp: %+v %v", h, h.FileMode())
	}
	if h := found["init"]; h.Mode != ModeRegular|0o755 || h.MTime != 0 || h.UID != 0 {
		t.Fatalf("init: %+v", h)
	}
}

func TestWriterRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func(w *Writer) error
		want string
	}{
		{"dotdot", func(w *Writer) error { return w.AddFile("a/../b", 0o644, nil) }, `".."`},
		{"empty", func(w *Writer) error { return w.AddFile("", 0o644, nil) }, "empty name"},
		{"root", func(w *Writer) error { return w.AddDir("/", 0o755) }, "archive root"},
		{"duplicate", func(w *Writer) error {
			if err := w.AddFile("a", 0o644, nil); err != nil {
				return err
			}
			return w.AddFile("/a", 0o644, nil)
		}, `duplicate entry "a"`},
		{"parent not dir", func(w *Writer) error {
			if err := w.AddFile("a", 0o644, nil); err != nil {
				return err
			}
			return w.AddFile("a/b", 0o644, nil)
		}, "parent a is not a directory"},
		{"short data", func(w *Writer) error { return w.AddFileFrom("a", 0o644, strings.NewReader("xy"), 5) }, "after 2 of 5 bytes"},
		{"absolute raw", func(w *Writer) error { return w.WriteHeader(Header{Name: "/abs"}) }, "absolute"},
		{"missing data", func(w *Writer) error {
			if err := w.WriteHeader(Header{Name: "a", Mode: ModeRegular, Size: 3}); err != nil {
				return err
			}
			return w.Close()
		}, "missing 3 bytes"},
		{"too long", func(w *Writer) error {
			if err := w.WriteHeader(Header{Name: "a", Mode: ModeRegular, Size: 1}); err != nil {
				return err
			}
			_, err := w.Write([]byte("xy"))
			return err
		}, "write too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do(NewWriter(io.Discard))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func readAll(b []byte) error {
	r := NewReader(bytes.NewReader(b))
	for {
		_, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
	}
}

func TestReaderErrors(t *testing.T) {
	good := sample(t)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "empty archive"},
		{"bad magic", mutate(func(b []byte) []byte { b[5] = '7'; return b }), `entry 0 at offset 110: header at offset 0 has magic "070707"`},
		{"crc format", mutate(func(b []byte) []byte { b[5] = '2'; return b }), "070702"},
		{"bad hex", mutate(func(b []byte) []byte { b[20] = 'g'; return b }), "header field 1 at offset 14 is not 8 hex digits"},
		{"huge name", mutate(func(b []byte) []byte { copy(b[94:102], "FFFFFFFF"); return b }), "name size 4294967295 is outside"},
		{"truncated data", good[:1800], "truncated in data"},
		{"no trailer", good[:bytes.Index(good, []byte("TRAILER"))-110], "truncated in header"},
		{"padding", mutate(func(b []byte) []byte { b[114] = 1; return b }), "name padding is not NUL"},
		{"dotdot", mutate(func(b []byte) []byte { copy(b[110:113], ".."); b[112] = 0; copy(b[94:102], "00000003"); return b }), `".."`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := readAll(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
	var dup bytes.Buffer
	w := NewWriter(&dup)
	_ = w.AddFile("a", 0o644, nil)
	// Writer refuses duplicates, so splice a second copy of the entry in by hand.
	entry := append([]byte(nil), dup.Bytes()...)
	_ = w.Close()
	in := append(append(entry, entry...), dup.Bytes()[len(entry):]...)
	if err := readAll(in); err == nil || !strings.Contains(err.Error(), `entry 1 ("a") at offset 224: duplicate name`) {
		t.Fatalf("duplicate: got %v", err)
	}
}

// canonical upper-cases the header hex digits of a (valid) archive prefix,
// which is the only liberty the reader takes over what the writer produces.
func canonical(b []byte) []byte {
	out := append([]byte(nil), b...)
	off := 0
	for off+headerLen <= len(out) {
		copy(out[off+6:off+headerLen], bytes.ToUpper(out[off+6:off+headerLen]))
		size, _ := parseHex8(out[off+54 : off+62])
		nameSize, _ := parseHex8(out[off+94 : off+102])
		name := string(out[off+headerLen : off+headerLen+int(nameSize)-1])
		off += headerLen + int(nameSize)
		off += int(pad4(int64(off)))
		if name == TrailerName {
			break
		}
		off += int(size) + int(pad4(int64(size)))
	}
	return out
}

func FuzzReader(f *testing.F) {
	f.Add(sample(f))
	var small bytes.Buffer
	w := NewWriter(&small)
	_ = w.AddFile("x", 0o644, []byte("abc"))
	_ = w.Close()
	f.Add(small.Bytes())
	f.Add([]byte(strings.ToLower(string(small.Bytes()))))
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, consumed, _, err := copyArchive(in)
		if err != nil {
			return
		}
		want := canonical(in[:consumed])
		if !bytes.Equal(out[:consumed], want) {
			t.Fatalf("accepted archive does not round trip:\n in %q\nout %q", want, out[:consumed])
		}
		if bytes.Count(out[consumed:], []byte{0}) != len(out)-int(consumed) {
			t.Fatalf("writer added non-NUL bytes after the trailer")
		}
	})
}
