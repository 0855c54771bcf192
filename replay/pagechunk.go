package replay

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// A page chunk is the payload of a CheckpointChunk entry: what the backup
// must hold in up to MaxChunkPages guest pages once it has loaded a
// checkpoint. Each page is one of three kinds:
//
//   - PageZero: all zeros (no payload);
//   - PageContent: its bytes travel in the chunk, compressed;
//   - PageHashed: only a hash travels. The primary names a page this way
//     when it was written before the last point at which both sides held
//     the same memory (the backup computed it by replaying), so the backup
//     already holds it. The backup checks every such page against the
//     hash and stops with a divergence if its own differs: a wrong guess
//     of the primary (or a write no dirty log saw) never goes unnoticed.
//
// Wire format (uvarints minimal, as in codec.go):
//
//	chunk  = count:uvarint record{count} [deflate]
//	record = gap:uvarint kind:byte [hash:16 if kind = PageHashed]
//
// Page numbers strictly increase: the first record's gap is its page
// number, each later one's is page - previous page - 1. deflate is a raw
// DEFLATE stream (RFC 1951, compress/flate) of the PageContent pages'
// bytes in record order, present exactly when there is at least one such
// page; it must decompress to exactly their bytes and end where the chunk
// ends. Unlike the rest of the log, a chunk's encoding is not canonical
// (DEFLATE has many encodings of the same bytes): decoding then encoding
// gives the same pages, not necessarily the same bytes.
const (
	// MaxChunkPages is the most pages one chunk describes: 256 KiB of
	// content at most, well under the log channel's entry bound with a
	// batch around it.
	MaxChunkPages = 64
	// MaxCheckpointChunk bounds a chunk's encoding: the records and the
	// largest DEFLATE stream of MaxChunkPages pages (stored blocks cost 5
	// bytes per 64 KiB), with room to spare.
	MaxCheckpointChunk = MaxChunkPages*PageSize + 4096
	// PageHashSize is the length of a PageHashed record's hash: the first
	// 16 bytes of the page's SHA-256. It is compared with a page the
	// backup computed, not chosen by anyone, so 128 bits leave no room
	// for an accidental match; the log is authenticated, so nobody else
	// chooses either side.
	PageHashSize = 16
)

// PageKind says how a chunk describes a page.
type PageKind uint8

// Page kinds; the values are part of the wire format.
const (
	PageZero    PageKind = 1
	PageContent PageKind = 2
	PageHashed  PageKind = 3
)

func (k PageKind) String() string {
	switch k {
	case PageZero:
		return "zero"
	case PageContent:
		return "content"
	case PageHashed:
		return "hashed"
	}
	return fmt.Sprintf("PageKind(%d)", uint8(k))
}

// PageHash is the hash a PageHashed record carries.
type PageHash [PageHashSize]byte

// HashPage returns page's PageHash.
func HashPage(page []byte) PageHash {
	sum := sha256.Sum256(page)
	return PageHash(sum[:PageHashSize])
}

// ChunkPage is one record of a chunk.
type ChunkPage struct {
	Page uint64 // page number: guest-physical address / PageSize
	Kind PageKind
	Hash PageHash // PageHashed only
}

// maxPageNumber is the largest page whose address fits an int64 (the
// CheckpointPage entries' bound too).
const maxPageNumber = math.MaxInt64 / PageSize

// chunkWriter builds chunks. It keeps its buffers and its DEFLATE state
// between chunks, so a checkpoint allocates nothing once they have grown.
// Not safe for concurrent use.
type chunkWriter struct {
	pages   []ChunkPage
	content []byte // the PageContent pages' bytes, in order
	out     []byte // the last encoding
	zw      *flate.Writer
	sink    appendWriter
}

// appendWriter is an io.Writer appending to a slice.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// reset starts a new chunk.
func (w *chunkWriter) reset() {
	w.pages, w.content = w.pages[:0], w.content[:0]
}

// len is the number of pages in the chunk so far.
func (w *chunkWriter) len() int { return len(w.pages) }

// add appends a page record; content is the page's bytes for PageContent
// (copied), nil otherwise. Pages must come in increasing order and at most
// MaxChunkPages of them.
func (w *chunkWriter) add(p ChunkPage, content []byte) error {
	switch {
	case len(w.pages) == MaxChunkPages:
		return fmt.Errorf("page chunk full (%d pages)", MaxChunkPages)
	case p.Page > maxPageNumber:
		return fmt.Errorf("page number %d out of range", p.Page)
	case len(w.pages) > 0 && p.Page <= w.pages[len(w.pages)-1].Page:
		return fmt.Errorf("page %d after page %d: pages must increase", p.Page, w.pages[len(w.pages)-1].Page)
	case p.Kind < PageZero || p.Kind > PageHashed:
		return fmt.Errorf("page %d: unknown kind %d", p.Page, p.Kind)
	case p.Kind != PageHashed && p.Hash != PageHash{}:
		return fmt.Errorf("page %d: a %v page carries no hash", p.Page, p.Kind)
	case (p.Kind == PageContent) != (content != nil):
		return fmt.Errorf("page %d: content given for a %v page, or missing", p.Page, p.Kind)
	case content != nil && len(content) != PageSize:
		return fmt.Errorf("page %d: %d bytes of content, a page is %d", p.Page, len(content), PageSize)
	}
	w.pages = append(w.pages, p)
	w.content = append(w.content, content...)
	return nil
}

// encode returns the chunk's encoding; it aliases the writer's buffer until
// the next encode. An empty chunk is refused.
func (w *chunkWriter) encode() ([]byte, error) {
	if len(w.pages) == 0 {
		return nil, errors.New("empty page chunk")
	}
	b := binary.AppendUvarint(w.out[:0], uint64(len(w.pages)))
	var next uint64
	for _, p := range w.pages {
		b = binary.AppendUvarint(b, p.Page-next)
		b = append(b, byte(p.Kind))
		if p.Kind == PageHashed {
			b = append(b, p.Hash[:]...)
		}
		next = p.Page + 1
	}
	if len(w.content) > 0 {
		w.sink.b = b
		if w.zw == nil {
			// BestSpeed: the primary's guest waits for the checkpoint, and
			// guest pages (page tables, stacks, kernel data) compress well
			// even at the lowest level.
			zw, err := flate.NewWriter(&w.sink, flate.BestSpeed)
			if err != nil {
				return nil, fmt.Errorf("compress checkpoint pages: %w", err)
			}
			w.zw = zw
		} else {
			w.zw.Reset(&w.sink)
		}
		if _, err := w.zw.Write(w.content); err != nil {
			return nil, fmt.Errorf("compress checkpoint pages: %w", err)
		}
		if err := w.zw.Close(); err != nil {
			return nil, fmt.Errorf("compress checkpoint pages: %w", err)
		}
		b = w.sink.b
		w.sink.b = nil
	}
	if len(b) > MaxCheckpointChunk {
		return nil, fmt.Errorf("page chunk of %d bytes exceeds the %d-byte bound", len(b), MaxCheckpointChunk)
	}
	w.out = b
	return b, nil
}

// chunkReader decodes chunks of untrusted bytes. Every count and page
// number is bounded before use and the decompressed size is fixed by the
// records, so garbage costs neither memory nor a panic; it keeps its
// buffers and DEFLATE state between chunks. Not safe for concurrent use.
type chunkReader struct {
	pages   [MaxChunkPages]ChunkPage
	n       int
	content []byte // PageContent bytes, in record order
	src     bytes.Reader
	zr      io.ReadCloser
}

// decode reads chunk; afterwards Pages lists its records and Content(i)
// the bytes of the i-th PageContent page.
func (r *chunkReader) decode(chunk []byte) error {
	r.n, r.content = 0, r.content[:0]
	off := 0
	uvarint := func(what string) (uint64, error) {
		v, k := binary.Uvarint(chunk[off:])
		switch {
		case k == 0:
			return 0, fmt.Errorf("page chunk truncated in its %s at offset %d", what, off)
		case k < 0:
			return 0, fmt.Errorf("page chunk %s at offset %d overflows 64 bits", what, off)
		case k > 1 && chunk[off+k-1] == 0:
			return 0, fmt.Errorf("page chunk %s at offset %d is not minimally encoded", what, off)
		}
		off += k
		return v, nil
	}
	count, err := uvarint("page count")
	if err != nil {
		return err
	}
	if count == 0 || count > MaxChunkPages {
		return fmt.Errorf("page chunk of %d pages, not 1..%d", count, MaxChunkPages)
	}
	contents := 0
	var next uint64
	for i := range int(count) {
		gap, err := uvarint("page gap")
		if err != nil {
			return err
		}
		if gap > maxPageNumber || next > maxPageNumber-gap {
			return fmt.Errorf("page chunk record %d: page number beyond %d", i, uint64(maxPageNumber))
		}
		p := ChunkPage{Page: next + gap}
		if off >= len(chunk) {
			return fmt.Errorf("page chunk truncated in record %d's kind", i)
		}
		p.Kind = PageKind(chunk[off])
		off++
		switch p.Kind {
		case PageZero:
		case PageContent:
			contents++
		case PageHashed:
			if len(chunk)-off < PageHashSize {
				return fmt.Errorf("page chunk truncated in record %d's hash", i)
			}
			off += copy(p.Hash[:], chunk[off:])
		default:
			return fmt.Errorf("page chunk record %d: unknown page kind %d", i, p.Kind)
		}
		r.pages[i] = p
		next = p.Page + 1
	}
	if contents == 0 {
		if off != len(chunk) {
			return fmt.Errorf("page chunk without content pages has %d bytes after its records", len(chunk)-off)
		}
		r.n = int(count)
		return nil
	}
	if off == len(chunk) {
		return errors.New("page chunk with content pages ends before their compressed bytes")
	}
	r.src.Reset(chunk[off:])
	if r.zr == nil {
		r.zr = flate.NewReader(&r.src)
	} else if err := r.zr.(flate.Resetter).Reset(&r.src, nil); err != nil {
		return fmt.Errorf("page chunk: start decompressing: %w", err)
	}
	want := contents * PageSize
	if cap(r.content) < want {
		r.content = make([]byte, 0, MaxChunkPages*PageSize)
	}
	r.content = r.content[:want]
	if _, err := io.ReadFull(r.zr, r.content); err != nil {
		r.content = r.content[:0]
		return fmt.Errorf("page chunk: decompress %d content pages: %w", contents, err)
	}
	// The stream must end here, and the chunk with it: more bytes would
	// be pages the records do not name, or bytes nobody reads.
	var one [1]byte
	if k, err := r.zr.Read(one[:]); k != 0 || err != io.EOF {
		r.content = r.content[:0]
		if err != nil && err != io.EOF {
			return fmt.Errorf("page chunk: decompress %d content pages: %w", contents, err)
		}
		return fmt.Errorf("page chunk: the compressed bytes hold more than its %d content pages", contents)
	}
	if r.src.Len() != 0 {
		r.content = r.content[:0]
		return fmt.Errorf("page chunk: %d bytes after the compressed stream", r.src.Len())
	}
	r.n = int(count)
	return nil
}

// Pages lists the records of the last chunk decoded.
func (r *chunkReader) Pages() []ChunkPage { return r.pages[:r.n] }

// Content is the bytes of the i-th PageContent page of the last chunk
// (counting PageContent records only).
func (r *chunkReader) Content(i int) []byte {
	return r.content[i*PageSize : (i+1)*PageSize : (i+1)*PageSize]
}

// DecodePageChunk decodes a CheckpointChunk's payload into its records and
// the content of its PageContent pages (copied, in record order), for
// tools and tests; the replayer decodes without allocating.
func DecodePageChunk(chunk []byte) ([]ChunkPage, [][]byte, error) {
	var r chunkReader
	if err := r.decode(chunk); err != nil {
		return nil, nil, err
	}
	pages := append([]ChunkPage(nil), r.Pages()...)
	var content [][]byte
	for i := range len(r.content) / PageSize {
		content = append(content, append([]byte(nil), r.Content(i)...))
	}
	return pages, content, nil
}

// EncodePageChunk encodes records and the content of their PageContent
// pages (in record order) as a CheckpointChunk's payload; for tools and
// tests, such as one that alters a logged checkpoint.
func EncodePageChunk(pages []ChunkPage, content [][]byte) ([]byte, error) {
	var w chunkWriter
	for _, p := range pages {
		var c []byte
		if p.Kind == PageContent {
			if len(content) == 0 {
				return nil, fmt.Errorf("page %d: no content left for it", p.Page)
			}
			c, content = content[0], content[1:]
		}
		if err := w.add(p, c); err != nil {
			return nil, err
		}
	}
	if len(content) > 0 {
		return nil, fmt.Errorf("%d pages of content more than the content records", len(content))
	}
	b, err := w.encode()
	if err != nil {
		return nil, err
	}
	return bytes.Clone(b), nil
}
