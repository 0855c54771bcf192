package replay

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"
)

// testPage is a page of compressible text (like kernel data) or, with
// random set, of incompressible bytes.
func testPage(seed uint64, random bool) []byte {
	p := make([]byte, PageSize)
	if random {
		r := rand.New(rand.NewPCG(seed, 1))
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		return p
	}
	for i := 0; i < len(p); i += 32 {
		copy(p[i:], "page "+string(rune('a'+seed%26))+" holds some text ")
	}
	return p
}

type chunkInput struct {
	page    ChunkPage
	content []byte
}

func encodeChunk(t testing.TB, in []chunkInput) []byte {
	t.Helper()
	var w chunkWriter
	for _, c := range in {
		if err := w.add(c.page, c.content); err != nil {
			t.Fatal(err)
		}
	}
	b, err := w.encode()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(b)
}

// checkDecoded compares a decoded chunk with what was encoded.
func checkDecoded(t *testing.T, r *chunkReader, in []chunkInput) {
	t.Helper()
	got := r.Pages()
	if len(got) != len(in) {
		t.Fatalf("decoded %d pages, encoded %d", len(got), len(in))
	}
	content := 0
	for i, c := range in {
		if got[i] != c.page {
			t.Fatalf("page %d: decoded %+v, encoded %+v", i, got[i], c.page)
		}
		if c.page.Kind == PageContent {
			if !bytes.Equal(r.Content(content), c.content) {
				t.Fatalf("page %d: content differs", i)
			}
			content++
		}
	}
}

// A chunk of every kind, at the edges of the page number range, decodes to
// what was encoded, with one reader reused across chunks; the text pages
// compress.
func TestPageChunkRoundTrip(t *testing.T) {
	var r chunkReader
	for _, in := range [][]chunkInput{
		{{ChunkPage{Page: 0, Kind: PageZero}, nil}},
		{{ChunkPage{Page: 7, Kind: PageHashed, Hash: HashPage(testPage(1, false))}, nil}},
		{{ChunkPage{Page: maxPageNumber, Kind: PageContent}, testPage(2, true)}},
		{
			{ChunkPage{Page: 1, Kind: PageContent}, testPage(3, false)},
			{ChunkPage{Page: 2, Kind: PageZero}, nil},
			{ChunkPage{Page: 300, Kind: PageHashed, Hash: HashPage(testPage(4, true))}, nil},
			{ChunkPage{Page: 301, Kind: PageContent}, testPage(5, true)},
			{ChunkPage{Page: 1 << 30, Kind: PageContent}, testPage(6, false)},
		},
	} {
		b := encodeChunk(t, in)
		if err := r.decode(b); err != nil {
			t.Fatal(err)
		}
		checkDecoded(t, &r, in)
	}
	var full []chunkInput
	for p := range uint64(MaxChunkPages) {
		full = append(full, chunkInput{ChunkPage{Page: p * 3, Kind: PageContent}, testPage(p, false)})
	}
	b := encodeChunk(t, full)
	if len(b) > MaxChunkPages*PageSize/4 {
		t.Errorf("%d text pages took %d bytes; they compress far better", MaxChunkPages, len(b))
	}
	if err := r.decode(b); err != nil {
		t.Fatal(err)
	}
	checkDecoded(t, &r, full)
	// Incompressible pages stay within the bound.
	for i := range full {
		full[i].content = testPage(uint64(i), true)
	}
	if b := encodeChunk(t, full); len(b) > MaxCheckpointChunk {
		t.Fatalf("%d random pages took %d bytes, over MaxCheckpointChunk", MaxChunkPages, len(b))
	}
}

func TestPageChunkWriterRefuses(t *testing.T) {
	page := testPage(1, false)
	for _, c := range []struct {
		name string
		prev *ChunkPage
		p    ChunkPage
		data []byte
		want string
	}{
		{"page beyond the format", nil, ChunkPage{Page: maxPageNumber + 1, Kind: PageZero}, nil, "out of range"},
		{"not increasing", &ChunkPage{Page: 5, Kind: PageZero}, ChunkPage{Page: 5, Kind: PageZero}, nil, "must increase"},
		{"unknown kind", nil, ChunkPage{Page: 1, Kind: 4}, nil, "unknown kind"},
		{"hash on a zero page", nil, ChunkPage{Page: 1, Kind: PageZero, Hash: PageHash{1}}, nil, "carries no hash"},
		{"content without bytes", nil, ChunkPage{Page: 1, Kind: PageContent}, nil, "missing"},
		{"bytes for a hashed page", nil, ChunkPage{Page: 1, Kind: PageHashed}, page, "content given"},
		{"short content", nil, ChunkPage{Page: 1, Kind: PageContent}, page[:100], "a page is 4096"},
	} {
		var w chunkWriter
		if c.prev != nil {
			if err := w.add(*c.prev, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.add(c.p, c.data); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
	}
	var w chunkWriter
	if _, err := w.encode(); err == nil {
		t.Error("an empty chunk was encoded")
	}
	for p := range uint64(MaxChunkPages) {
		if err := w.add(ChunkPage{Page: p, Kind: PageZero}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.add(ChunkPage{Page: MaxChunkPages, Kind: PageZero}, nil); err == nil || !strings.Contains(err.Error(), "full") {
		t.Errorf("a page past MaxChunkPages: %v", err)
	}
}

func TestPageChunkDecoderRefuses(t *testing.T) {
	one := encodeChunk(t, []chunkInput{{ChunkPage{Page: 3, Kind: PageContent}, testPage(1, false)}})
	stream := one[3:] // count 1, gap 3, kind 2, then the DEFLATE stream
	two := encodeChunk(t, []chunkInput{
		{ChunkPage{Page: 3, Kind: PageContent}, testPage(1, false)},
		{ChunkPage{Page: 4, Kind: PageContent}, testPage(2, false)},
	})
	hashed := []byte{1, 0, byte(PageHashed)}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, c := range []struct {
		name  string
		chunk []byte
		want  string
	}{
		{"empty", nil, "truncated in its page count"},
		{"no pages", []byte{0}, "of 0 pages"},
		{"too many pages", []byte{MaxChunkPages + 1}, "of 65 pages"},
		{"non-minimal count", []byte{0x81, 0x00}, "not minimally encoded"},
		{"overflowing count", bytes.Repeat([]byte{0xff}, 11), "overflows"},
		{"truncated record", []byte{1}, "truncated in its page gap"},
		{"no kind", []byte{1, 5}, "truncated in record 0's kind"},
		{"unknown kind", []byte{1, 5, 9}, "unknown page kind 9"},
		{"kind zero", []byte{1, 5, 0}, "unknown page kind 0"},
		{"truncated hash", cat(hashed, make([]byte, PageHashSize-1)), "truncated in record 0's hash"},
		{"page beyond the format", binary.AppendUvarint([]byte{1}, maxPageNumber+1), "page number beyond"},
		{"second page beyond the format", cat([]byte{2}, binary.AppendUvarint(nil, maxPageNumber), []byte{1, 0, 1}), "record 1: page number beyond"},
		{"bytes after the records", []byte{1, 5, byte(PageZero), 0}, "1 bytes after its records"},
		{"content without its stream", []byte{1, 5, byte(PageContent)}, "ends before their compressed bytes"},
		{"stream cut short", one[:len(one)-3], "decompress 1 content pages"},
		{"stream of two pages for one", cat([]byte{1, 3, byte(PageContent)}, two[5:]), "more than its 1 content pages"},
		{"stream of one page for two", cat([]byte{2, 3, byte(PageContent), 0, byte(PageContent)}, stream), "decompress 2 content pages"},
		{"bytes after the stream", cat(one, []byte{0}), "1 bytes after the compressed stream"},
		{"garbage stream", []byte{1, 3, byte(PageContent), 0xff, 0xff, 0xff}, "decompress"},
	} {
		var r chunkReader
		if err := r.decode(c.chunk); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
		if len(r.Pages()) != 0 {
			t.Errorf("%s: a refused chunk left %d pages", c.name, len(r.Pages()))
		}
	}
}

// FuzzPageChunk decodes arbitrary bytes as a page chunk: it never panics,
// and a chunk it accepts has increasing page numbers within the format and
// exactly one page of content per PageContent record, and encodes again to
// a chunk that decodes to the same pages (the bytes may differ: DEFLATE
// encodings are not unique).
func FuzzPageChunk(f *testing.F) {
	f.Add([]byte{1, 0, byte(PageZero)})
	f.Add(encodeChunk(f, []chunkInput{
		{ChunkPage{Page: 1, Kind: PageContent}, testPage(3, false)},
		{ChunkPage{Page: 2, Kind: PageZero}, nil},
		{ChunkPage{Page: 9, Kind: PageHashed, Hash: HashPage(testPage(4, false))}, nil},
		{ChunkPage{Page: 10, Kind: PageContent}, make([]byte, PageSize)},
	}))
	f.Add(encodeChunk(f, []chunkInput{{ChunkPage{Page: maxPageNumber, Kind: PageContent}, testPage(5, true)}}))
	f.Fuzz(func(t *testing.T, chunk []byte) {
		var r chunkReader
		if err := r.decode(chunk); err != nil {
			return
		}
		var in []chunkInput
		content := 0
		for i, p := range r.Pages() {
			if p.Page > maxPageNumber || (i > 0 && p.Page <= r.Pages()[i-1].Page) {
				t.Fatalf("accepted page %d at record %d", p.Page, i)
			}
			c := chunkInput{page: p}
			if p.Kind == PageContent {
				c.content = bytes.Clone(r.Content(content))
				content++
			}
			in = append(in, c)
		}
		if len(r.content) != content*PageSize {
			t.Fatalf("%d bytes of content for %d content pages", len(r.content), content)
		}
		again := encodeChunk(t, in)
		var r2 chunkReader
		if err := r2.decode(again); err != nil {
			t.Fatalf("a re-encoded chunk does not decode: %v", err)
		}
		checkDecoded(t, &r2, in)
	})
}

// The exported codec round-trips and refuses content that does not match
// the records.
func TestExportedPageChunkCodec(t *testing.T) {
	pages := []ChunkPage{
		{Page: 1, Kind: PageContent},
		{Page: 2, Kind: PageHashed, Hash: HashPage(testPage(2, false))},
		{Page: 3, Kind: PageZero},
		{Page: 9, Kind: PageContent},
	}
	content := [][]byte{testPage(1, false), testPage(9, true)}
	b, err := EncodePageChunk(pages, content)
	if err != nil {
		t.Fatal(err)
	}
	gotPages, gotContent, err := DecodePageChunk(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(gotPages) != len(pages) || len(gotContent) != len(content) {
		t.Fatalf("decoded %d pages and %d contents", len(gotPages), len(gotContent))
	}
	for i := range pages {
		if gotPages[i] != pages[i] {
			t.Fatalf("page %d: %+v, want %+v", i, gotPages[i], pages[i])
		}
	}
	for i := range content {
		if !bytes.Equal(gotContent[i], content[i]) {
			t.Fatalf("content %d differs", i)
		}
	}
	if _, err := EncodePageChunk(pages, content[:1]); err == nil {
		t.Error("a content record without content was encoded")
	}
	if _, err := EncodePageChunk(pages, append(content, testPage(3, false))); err == nil {
		t.Error("content without a record was encoded")
	}
}
