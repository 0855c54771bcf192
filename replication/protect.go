package replication

import (
	"context"
	"fmt"

	"github.com/ftvm/ftvm/hypervisor/vm"
	"github.com/ftvm/ftvm/instance"
)

// Protect makes inst, a VM running live (alone, a backup gone live after
// its primary was lost, or a primary that lost its backup and won the
// arbiter's record), the primary of a new pair while it runs:
// it connects to the backup at cfg.Peer, copies the VM's state there with
// the guest running (see transfer.go), and at one exit, with the guest
// stopped for the last round, puts the output gate in front of the
// guest's outputs and starts recording. From then on it is a primary like
// one NewPrimary made; Run does not apply (the VM runs already): the
// caller starts it with the returned start function and, once its own
// Run of inst returned, ends it with finish.
//
// runCtx is the context inst runs under and stopVM cancels it: the
// primary stops the VM with them when it loses the arbiter's record. The
// VM must be replicable (instance.Config.Replicable, or a former backup).
// cfg.Instance and cfg.Restore are ignored: the machine is inst's.
func Protect(ctx context.Context, inst *instance.Instance, runCtx context.Context, stopVM context.CancelCauseFunc, cfg PrimaryConfig, opts TransferOptions) (_ *Primary, _ TransferResult, err error) {
	icfg := inst.Config()
	cfg.Instance = icfg
	cfg.Restore = ""
	cfg.setDefaults()
	p := newPrimary(cfg)
	p.inst, p.runCtx, p.stopVM = inst, runCtx, stopVM
	defer func() {
		if err != nil && p.sender != nil {
			p.sender.Close()
		}
	}()
	if err := p.readArbiter(ctx); err != nil {
		return nil, TransferResult{}, err
	}
	id, err := inst.Identity()
	if err != nil {
		return nil, TransferResult{}, err
	}
	hdr, err := newHeader(icfg, inst.VM.WallTime())
	if err != nil {
		return nil, TransferResult{}, err
	}
	hdr.Transfer = true
	p.setState("copying the running VM's state to the new backup", nil)
	if err := p.connect(ctx, hdr); err != nil {
		return nil, TransferResult{}, err
	}
	p.startRecording()
	wrap := p.outputWrappers()

	res, err := precopy(ctx, inst, id, p.sender, opts, func() error {
		// A primary that lost its backup and won the record still
		// records, into nowhere; its recorder reads the dirty-page logs
		// the rounds need, so it stops now (its gate, alone, stays in
		// front of the outputs) and this one takes over at the switch.
		if inst.VM.Recording() {
			inst.VM.StopRecording()
		}
		return nil
	}, func() error {
		inst.WrapOutputs(wrap)
		return inst.VM.StartRecording(p.rec)
	})
	if err != nil {
		return nil, res, fmt.Errorf("protect the running VM: %w", err)
	}
	if p.gen != 0 {
		inst.SetGeneration(p.gen)
	}
	p.setState("replicating", nil)
	if cfg.Connected != nil {
		cfg.Connected()
	}
	return p, res, nil
}

// Start starts a primary made by Protect (its releaser and flusher) and
// returns the function that ends it, to be called once the VM stopped:
// it lets the last outputs out and closes the log channel cleanly, as Run
// does after the VM stops.
func (p *Primary) Start(ctx context.Context) (finish func(reason vm.StopReason, runErr error) (*PrimaryResult, error)) {
	stopBG := p.start(ctx)
	return func(reason vm.StopReason, runErr error) (*PrimaryResult, error) {
		return p.finish(stopBG, reason, runErr)
	}
}
