package boot

import (
	"encoding/binary"
	"fmt"
)

// Page table entry bits (Intel SDM vol. 3, 4.5).
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	ptePageSize = 1 << 7 // in a PD entry: maps a 2 MiB page
)

// writePageTables writes an identity map of the first IdentityMapSize
// bytes with 2 MiB pages: PML4[0] -> PDPT, PDPT[i] -> PD page i, each PD
// entry a 2 MiB page. The 64-bit boot protocol requires the kernel, the
// zero page and the command line to be identity mapped; mapping the whole
// 32-bit space also covers the initrd and the MMIO gap without depending on
// the RAM size. Linux replaces these tables early in startup_64.
func writePageTables(mem []byte) error {
	end := PDAddr + PDPages*PageSize
	if end > uint64(len(mem)) {
		return fmt.Errorf("write page tables: guest memory of %d bytes too small", len(mem))
	}
	clear(mem[PML4Addr:end])
	binary.LittleEndian.PutUint64(mem[PML4Addr:], PDPTAddr|ptePresent|pteWritable)
	for i := uint64(0); i < PDPages; i++ {
		pd := PDAddr + i*PageSize
		binary.LittleEndian.PutUint64(mem[PDPTAddr+i*8:], pd|ptePresent|pteWritable)
		for j := uint64(0); j < 512; j++ {
			addr := (i<<30 | j<<21)
			binary.LittleEndian.PutUint64(mem[pd+j*8:], addr|ptePresent|pteWritable|ptePageSize)
		}
	}
	return nil
}
