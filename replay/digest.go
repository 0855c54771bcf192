package replay

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"math/bits"

	"github.com/ftvm/ftvm/hypervisor/kvm"
)

// Domain prefixes: each digest hashes a version tag first, so a change of
// layout changes every digest instead of silently comparing two layouts.
const (
	regsTag   = "ftvm regs v1\x00"
	memoryTag = "ftvm memory v1\x00"
	outputTag = "ftvm output v1\x00"
)

// RegsDigest hashes the vCPU state that must be identical on primary and
// backup at the same exit. The layout is fixed, little endian, in this
// order (it does not depend on Go struct layout or padding):
//
//   - regsTag;
//   - Regs: RAX RBX RCX RDX RSI RDI RSP RBP R8..R15 RIP RFLAGS, 8 bytes each;
//   - Sregs segments CS DS ES FS GS SS TR LDT, each Base (8) Limit (4)
//     Selector (2) Type Present DPL DB S L G AVL Unusable (1 each) = 23
//     bytes. The hidden descriptor cache is included on purpose: the CPU
//     uses it, not the selector, so two vCPUs with equal selectors but
//     different caches (a GDT rewritten without reloading) behave
//     differently;
//   - GDT then IDT, each Base (8) Limit (2);
//   - CR0 CR2 CR3 CR4 CR8 EFER APICBase, 8 bytes each;
//   - InterruptBitmap, 4 x 8 bytes (an interrupt KVM accepted but has
//     not delivered yet is pending guest state);
//   - a byte 1 followed by the FPU if fpu is non-nil, else a byte 0:
//     FPR (8 x 16) FCW (2) FSW (2) FTWX (1) LastOpcode (2) LastIP (8)
//     LastDP (8) XMM (16 x 16) MXCSR (4).
//
// fpu is optional because KVM_GET_FPU is one more ioctl per check; both
// sides must make the same choice or every digest differs.
func RegsDigest(r *kvm.Regs, s *kvm.Sregs, fpu *kvm.FPU) [32]byte {
	var b [1024]byte // the layout above is 450 bytes, 861 with the FPU
	p := append(b[:0], regsTag...)
	for _, v := range [...]uint64{r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RSP, r.RBP,
		r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15, r.RIP, r.RFLAGS} {
		p = binary.LittleEndian.AppendUint64(p, v)
	}
	for _, seg := range [...]*kvm.Segment{&s.CS, &s.DS, &s.ES, &s.FS, &s.GS, &s.SS, &s.TR, &s.LDT} {
		p = binary.LittleEndian.AppendUint64(p, seg.Base)
		p = binary.LittleEndian.AppendUint32(p, seg.Limit)
		p = binary.LittleEndian.AppendUint16(p, seg.Selector)
		p = append(p, seg.Type, seg.Present, seg.DPL, seg.DB, seg.S, seg.L, seg.G, seg.AVL, seg.Unusable)
	}
	for _, dt := range [...]*kvm.DTable{&s.GDT, &s.IDT} {
		p = binary.LittleEndian.AppendUint64(p, dt.Base)
		p = binary.LittleEndian.AppendUint16(p, dt.Limit)
	}
	for _, v := range [...]uint64{s.CR0, s.CR2, s.CR3, s.CR4, s.CR8, s.EFER, s.APICBase,
		s.InterruptBitmap[0], s.InterruptBitmap[1], s.InterruptBitmap[2], s.InterruptBitmap[3]} {
		p = binary.LittleEndian.AppendUint64(p, v)
	}
	if fpu == nil {
		p = append(p, 0)
	} else {
		p = append(p, 1)
		for i := range fpu.FPR {
			p = append(p, fpu.FPR[i][:]...)
		}
		p = binary.LittleEndian.AppendUint16(p, fpu.FCW)
		p = binary.LittleEndian.AppendUint16(p, fpu.FSW)
		p = append(p, fpu.FTWX)
		p = binary.LittleEndian.AppendUint16(p, fpu.LastOpcode)
		p = binary.LittleEndian.AppendUint64(p, fpu.LastIP)
		p = binary.LittleEndian.AppendUint64(p, fpu.LastDP)
		for i := range fpu.XMM {
			p = append(p, fpu.XMM[i][:]...)
		}
		p = binary.LittleEndian.AppendUint32(p, fpu.MXCSR)
	}
	return sha256.Sum256(p)
}

// Memory digest: a two-level hash tree over 4 KiB pages, so that a check
// after a few dirty pages rehashes those pages, their groups and the root
// rather than all of guest memory:
//
//	leaf[i]  = SHA-256(page i)                       (the last page may be short)
//	group[g] = SHA-256(leaf[g*512] || ... )           (up to 512 leaves)
//	root     = SHA-256(memoryTag || LE64(len(mem)) || group[0] || ...)
//
// MemoryDigest computes it from scratch; MemoryHasher keeps the leaves and
// groups and updates them from dirty page indices. Both give the same root.
const (
	PageSize      = 4096
	pagesPerGroup = 512
)

// MemoryDigest is the root of the memory hash tree over mem.
func MemoryDigest(mem []byte) [32]byte {
	h := NewMemoryHasher(mem)
	return h.Sum()
}

// MemoryHasher keeps the hash tree of one guest memory region (one
// KVM memory slot) up to date. It costs 32 bytes per 4 KiB page (8 MiB per
// GiB). It reads mem only in NewMemoryHasher and Update, which must run
// while the vCPU is stopped (on the exit loop's goroutine, between exits).
// It is not safe for concurrent use.
type MemoryHasher struct {
	mem    []byte
	leaves [][32]byte
	groups [][32]byte
	stale  []bool // groups whose leaves changed since the last Sum
	h      hash.Hash
	buf    []byte
}

// NewMemoryHasher hashes all of mem.
func NewMemoryHasher(mem []byte) *MemoryHasher {
	pages := (len(mem) + PageSize - 1) / PageSize
	groups := (pages + pagesPerGroup - 1) / pagesPerGroup
	m := &MemoryHasher{
		mem:    mem,
		leaves: make([][32]byte, pages),
		groups: make([][32]byte, groups),
		stale:  make([]bool, groups),
		h:      sha256.New(),
	}
	for i := range m.leaves {
		m.hashPage(i)
	}
	return m
}

// Pages is the number of pages (the last one possibly short).
func (m *MemoryHasher) Pages() int { return len(m.leaves) }

func (m *MemoryHasher) hashPage(i int) {
	end := min((i+1)*PageSize, len(m.mem))
	m.leaves[i] = sha256.Sum256(m.mem[i*PageSize : end])
	m.stale[i/pagesPerGroup] = true
}

// Update rehashes the given pages (indices into mem, 4 KiB each), e.g.
// those KVM's dirty log reported since the last Update. Listing a page
// twice, or a clean page, is harmless. An index out of range is an error
// and nothing is updated.
func (m *MemoryHasher) Update(pages []uint64) error {
	for _, p := range pages {
		if p >= uint64(len(m.leaves)) {
			return fmt.Errorf("replay: dirty page %d outside %d-page memory", p, len(m.leaves))
		}
	}
	for _, p := range pages {
		m.hashPage(int(p))
	}
	return nil
}

// UpdateBitmap rehashes the pages whose bits are set in bitmap, in the
// layout KVM_GET_DIRTY_LOG returns (bit i of word i/64 is page i). Bits
// beyond the last page must be clear.
func (m *MemoryHasher) UpdateBitmap(bitmap []uint64) error {
	n := len(m.leaves)
	for w, word := range bitmap {
		for word != 0 {
			bit := bits.TrailingZeros64(word)
			word &^= 1 << bit
			p := w*64 + bit
			if p >= n {
				return fmt.Errorf("replay: dirty bit %d outside %d-page memory", p, n)
			}
			m.hashPage(p)
		}
	}
	return nil
}

// Sum returns the root, rehashing only the groups that changed.
func (m *MemoryHasher) Sum() [32]byte {
	for g, stale := range m.stale {
		if !stale {
			continue
		}
		m.h.Reset()
		end := min((g+1)*pagesPerGroup, len(m.leaves))
		for i := g * pagesPerGroup; i < end; i++ {
			m.h.Write(m.leaves[i][:])
		}
		m.h.Sum(m.groups[g][:0])
		m.stale[g] = false
	}
	m.h.Reset()
	m.buf = binary.LittleEndian.AppendUint64(append(m.buf[:0], memoryTag...), uint64(len(m.mem)))
	m.h.Write(m.buf)
	for i := range m.groups {
		m.h.Write(m.groups[i][:])
	}
	var root [32]byte
	m.h.Sum(root[:0])
	return root
}

// OutputHash is the hash an Output entry carries: kind, device, offset
// (0 for frames) and the bytes, so equal data written to two offsets or
// sent by two devices differs.
func OutputHash(kind, dev uint8, offset int64, data []byte) [32]byte {
	h := sha256.New()
	var hdr [len(outputTag) + 2 + 8]byte
	p := append(hdr[:0], outputTag...)
	p = append(p, kind, dev)
	p = binary.LittleEndian.AppendUint64(p, uint64(offset))
	h.Write(p)
	h.Write(data)
	var out [32]byte
	h.Sum(out[:0])
	return out
}
