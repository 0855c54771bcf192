package kvm

import (
	"encoding/binary"
	"fmt"
)

// kvmSyncX86Regs is KVM_SYNC_X86_REGS: kvm_run.s.regs mirrors struct
// kvm_regs after every KVM_RUN.
const kvmSyncX86Regs = 1 << 0

// syncRIPOffset is RIP inside kvm_run.s.regs: struct kvm_regs starts with
// the sixteen general-purpose registers.
const syncRIPOffset = runSyncRegsOffset + 16*8

// EnableSyncRegs asks KVM to copy the general registers into kvm_run after
// every KVM_RUN (KVM_CAP_SYNC_REGS), so SyncedRIP reads RIP without an
// ioctl. The replication layer reads it at every exit it logs.
func (v *VCPU) EnableSyncRegs(sys *System) error {
	n, err := sys.CheckExtension(CapSyncRegs)
	if err != nil {
		return err
	}
	if n&kvmSyncX86Regs == 0 {
		return fmt.Errorf("vcpu %d: KVM does not sync registers into kvm_run (KVM_CAP_SYNC_REGS = %#x)", v.id, n)
	}
	binary.LittleEndian.PutUint64(v.run[runValidRegsOffset:], kvmSyncX86Regs)
	return nil
}

// SyncedRIP is the guest's RIP as of the last return from KVM_RUN; valid
// only after EnableSyncRegs.
func (v *VCPU) SyncedRIP() uint64 {
	return binary.LittleEndian.Uint64(v.run[syncRIPOffset:])
}
