package initramfs

import (
	"errors"
	"fmt"
	"io"
)

// Reader reads a newc archive entry by entry. It is meant for untrusted
// input: sizes are bounded by the format (names by MaxNameSize, data is
// streamed, never buffered whole), and anything that the Writer would not
// produce byte for byte (bad magic or hex, non-NUL padding, names with "..",
// duplicate names, missing trailer) is an error naming the entry and offset.
// Hex digits are accepted in either case; the Writer writes upper case, as
// GNU cpio and the kernel's gen_init_cpio do.
type Reader struct {
	r         io.Reader
	off       int64  // bytes consumed from r
	entry     int    // index of the current entry
	cur       Header // current entry
	remaining int64  // unread data bytes of cur
	pad       int64  // padding after cur's data
	seen      map[string]bool
	trailer   *Header
	err       error // sticky
}

// NewReader returns a Reader that reads an archive from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: r, entry: -1, seen: map[string]bool{}}
}

// Offset returns the number of archive bytes consumed so far; after Next
// returned io.EOF it is the length of the archive up to and including the
// trailer entry (excluding the padding to 512 that may follow).
func (r *Reader) Offset() int64 { return r.off }

// Trailer returns the trailer's header once Next has returned io.EOF, so a
// copy can reproduce it exactly with Writer.WriteHeader.
func (r *Reader) Trailer() (Header, bool) {
	if r.trailer == nil {
		return Header{}, false
	}
	return *r.trailer, true
}

func (r *Reader) fail(format string, args ...any) error {
	name := ""
	if r.cur.Name != "" {
		name = fmt.Sprintf(" (%q)", r.cur.Name)
	}
	r.err = fmt.Errorf("initramfs: entry %d%s at offset %d: %s", r.entry, name, r.off, fmt.Sprintf(format, args...))
	return r.err
}

// readFull reads exactly len(p) bytes, reporting truncation as what.
func (r *Reader) readFull(p []byte, what string) error {
	n, err := io.ReadFull(r.r, p)
	r.off += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return r.fail("archive truncated in %s (need %d bytes, got %d)", what, len(p), n)
		}
		return r.fail("read %s: %v", what, err)
	}
	return nil
}

func (r *Reader) skipPadding(n int64, what string) error {
	if n == 0 {
		return nil
	}
	var buf [4]byte
	if err := r.readFull(buf[:n], what); err != nil {
		return err
	}
	for _, b := range buf[:n] {
		if b != 0 {
			return r.fail("%s is not NUL bytes", what)
		}
	}
	return nil
}

// Next advances to the next entry, skipping any unread data of the current
// one. It returns io.EOF after the trailer.
func (r *Reader) Next() (Header, error) {
	if r.err != nil {
		return Header{}, r.err
	}
	if r.trailer != nil {
		return Header{}, io.EOF
	}
	if r.remaining > 0 {
		n, err := io.CopyN(io.Discard, r.r, r.remaining)
		r.off += n
		r.remaining -= n
		if err != nil {
			if errors.Is(err, io.EOF) {
				return Header{}, r.fail("archive truncated in data: %d of %d bytes missing", r.remaining, r.cur.Size)
			}
			return Header{}, r.fail("read data: %v", err)
		}
	}
	if err := r.skipPadding(r.pad, "data padding"); err != nil {
		return Header{}, err
	}
	r.pad = 0
	r.entry++
	r.cur = Header{}

	var raw [headerLen]byte
	if err := r.readFull(raw[:], "header"); err != nil {
		if r.off == 0 {
			return Header{}, r.fail("empty archive (no header, no %s)", TrailerName)
		}
		return Header{}, err
	}
	start := r.off - headerLen
	if string(raw[:6]) != Magic {
		if string(raw[:6]) == "070702" {
			return Header{}, r.fail("header at offset %d is the newc-with-crc format (070702), only 070701 is supported", start)
		}
		return Header{}, r.fail("header at offset %d has magic %q, want %q (newc cpio)", start, raw[:6], Magic)
	}
	var f [13]uint32
	for i := range f {
		v, ok := parseHex8(raw[6+8*i : 14+8*i])
		if !ok {
			return Header{}, r.fail("header field %d at offset %d is not 8 hex digits: %q", i, start+6+8*int64(i), raw[6+8*i:14+8*i])
		}
		f[i] = v
	}
	h := Header{Ino: f[0], Mode: f[1], UID: f[2], GID: f[3], NLink: f[4], MTime: f[5], Size: f[6],
		DevMajor: f[7], DevMinor: f[8], RDevMajor: f[9], RDevMinor: f[10], Check: f[12]}
	nameSize := f[11]
	if nameSize < 2 || nameSize > MaxNameSize {
		return Header{}, r.fail("name size %d is outside 2..%d", nameSize, MaxNameSize)
	}
	nameBuf := make([]byte, int64(nameSize)+pad4(headerLen+int64(nameSize)))
	if err := r.readFull(nameBuf, "name"); err != nil {
		return Header{}, err
	}
	if nameBuf[nameSize-1] != 0 {
		return Header{}, r.fail("name is not NUL terminated")
	}
	for _, b := range nameBuf[nameSize:] {
		if b != 0 {
			return Header{}, r.fail("name padding is not NUL bytes")
		}
	}
	h.Name = string(nameBuf[:nameSize-1])
	if err := validName(h.Name); err != nil {
		return Header{}, r.fail("%v", err)
	}
	r.cur = h
	if h.Name == TrailerName {
		if h.Size != 0 {
			return Header{}, r.fail("trailer has %d bytes of data", h.Size)
		}
		r.trailer = &h
		return Header{}, io.EOF
	}
	if r.seen[h.Name] {
		return Header{}, r.fail("duplicate name")
	}
	r.seen[h.Name] = true
	r.remaining = int64(h.Size)
	r.pad = pad4(int64(h.Size))
	return h, nil
}

// Read reads data of the current entry; it returns io.EOF at its end.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.r.Read(p)
	r.off += int64(n)
	r.remaining -= int64(n)
	if err != nil && !(errors.Is(err, io.EOF) && r.remaining == 0) {
		if errors.Is(err, io.EOF) {
			return n, r.fail("archive truncated in data: %d of %d bytes missing", r.remaining, r.cur.Size)
		}
		return n, r.fail("read data: %v", err)
	}
	return n, nil
}

func parseHex8(b []byte) (uint32, bool) {
	var v uint32
	for _, c := range b {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint32(d)
	}
	return v, true
}
