package kvclient

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// The kv store as porcupine checks it: one register per key, so histories
// are partitioned by key and each key is checked on its own.
//
//	PUT k v -> "OK <seq>"               the register becomes v
//	GET k   -> "VALUE v" | "NOTFOUND"   the register's value, or none yet
//
// ECHO touches no state, so ECHO ops are left out. An op with an unknown
// outcome (its connection failed) is given a response after every other
// op: porcupine may then place it anywhere after its invocation, which
// covers both "took effect" and "never happened" for a PUT; an unknown GET
// tells nothing and is left out.

type kvInput struct {
	put        bool
	key, value string
}

type kvOutput struct {
	answer  string
	unknown bool
}

// register is one key's state; comparable, so porcupine's default
// equality works.
type register struct {
	set   bool
	value string
}

func kvStep(state, input, output any) (bool, any) {
	s, in, out := state.(register), input.(kvInput), output.(kvOutput)
	if in.put {
		if !out.unknown {
			seq, ok := strings.CutPrefix(out.answer, "OK ")
			if _, err := strconv.ParseUint(seq, 10, 64); !ok || err != nil {
				return false, s
			}
		}
		return true, register{set: true, value: in.value}
	}
	if out.unknown {
		return true, s
	}
	if v, ok := strings.CutPrefix(out.answer, "VALUE "); ok {
		return s.set && s.value == v, s
	}
	return out.answer == "NOTFOUND" && !s.set, s
}

// kvPartition splits a history into one partition per key, in key order.
func kvPartition(history []porcupine.Operation) [][]porcupine.Operation {
	key := func(op porcupine.Operation) string { return op.Input.(kvInput).key }
	ops := slices.Clone(history)
	slices.SortStableFunc(ops, func(a, b porcupine.Operation) int { return strings.Compare(key(a), key(b)) })
	var parts [][]porcupine.Operation
	for len(ops) > 0 {
		n := 1
		for n < len(ops) && key(ops[n]) == key(ops[0]) {
			n++
		}
		parts = append(parts, ops[:n:n])
		ops = ops[n:]
	}
	return parts
}

func describeOp(input, output any) string {
	in, out := input.(kvInput), output.(kvOutput)
	answer := out.answer
	if out.unknown {
		answer = "(no answer)"
	}
	if in.put {
		return fmt.Sprintf("PUT %s %s -> %s", in.key, clip(in.value), answer)
	}
	return fmt.Sprintf("GET %s -> %s", in.key, clip(answer))
}

func describeRegister(state any) string {
	if s := state.(register); s.set {
		return clip(s.value)
	}
	return "(not set)"
}

// kvModel is the porcupine model of the kv store.
var kvModel = porcupine.Model{
	Partition:         kvPartition,
	Init:              func() any { return register{} },
	Step:              kvStep,
	DescribeOperation: describeOp,
	DescribeState:     describeRegister,
}

// Verdict is the outcome of a linearizability check.
type Verdict struct {
	// Result is porcupine's: Ok, Illegal, or Unknown (it ran out of time).
	Result porcupine.CheckResult
	// Ops is how many PUT and GET ops were checked, Keys over how many keys.
	Ops, Keys int
	// Problems says, for each key whose ops no order explains (a few at
	// most), where the longest explainable order stopped.
	Problems []string

	info porcupine.LinearizationInfo
}

// Linearizable reports whether the check found a linearization.
func (v Verdict) Linearizable() bool { return v.Result == porcupine.Ok }

func (v Verdict) String() string {
	switch v.Result {
	case porcupine.Ok:
		return fmt.Sprintf("linearizable: yes (%d PUT/GET ops over %d keys)", v.Ops, v.Keys)
	case porcupine.Unknown:
		return fmt.Sprintf("linearizable: unknown (the check ran out of time on %d ops over %d keys)", v.Ops, v.Keys)
	}
	return fmt.Sprintf("linearizable: NO (%d PUT/GET ops over %d keys): %s", v.Ops, v.Keys, strings.Join(v.Problems, "; "))
}

// Visualize writes porcupine's HTML view of the history and the
// linearizations it found (for Illegal, the longest partial ones).
func (v Verdict) Visualize(w io.Writer) error {
	return porcupine.Visualize(kvModel, v.info, w)
}

// maxProblems bounds the keys a Verdict describes.
const maxProblems = 3

// CheckLinearizable checks the PUT and GET ops of h against the kv model,
// giving up after timeout (0: never).
func CheckLinearizable(h *History, timeout time.Duration) Verdict {
	all := h.Ops()
	var end time.Duration
	for _, o := range all {
		end = max(end, o.Return, o.Call)
	}
	var ops []porcupine.Operation
	keys := map[string]bool{}
	for i, o := range all {
		if o.Kind == "ECHO" || (o.Kind == "GET" && o.Unknown) {
			continue
		}
		ret := o.Return
		if o.Unknown {
			ret = end + 1
		}
		keys[o.Key] = true
		ops = append(ops, porcupine.Operation{
			ClientId: o.Client,
			Input:    kvInput{put: o.Kind == "PUT", key: o.Key, value: o.Value},
			Call:     int64(o.Call), Return: int64(ret),
			Output:   kvOutput{answer: o.Answer, unknown: o.Unknown},
			Metadata: i,
		})
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, ops, timeout)
	v := Verdict{Result: res, Ops: len(ops), Keys: len(keys), info: info}
	if res == porcupine.Illegal {
		v.Problems = problems(h, all, ops, info)
	}
	return v
}

// problems names, for the keys that failed, the op at which the longest
// partial linearization stopped: the earliest-invoked op it could not
// place. ops is what was checked; Metadata holds each op's index in all.
func problems(h *History, all []Op, ops []porcupine.Operation, info porcupine.LinearizationInfo) []string {
	parts := kvPartition(ops) // the same partitions, in the same order, as the check's
	var out []string
	for p, partials := range info.PartialLinearizationsOperations() {
		if p >= len(parts) || len(out) == maxProblems {
			break
		}
		var longest []porcupine.Operation
		for _, l := range partials {
			if len(l) > len(longest) {
				longest = l
			}
		}
		placed := map[int]bool{}
		for _, op := range longest {
			placed[op.Metadata.(int)] = true
		}
		stuck := -1
		for _, op := range parts[p] {
			i := op.Metadata.(int)
			if !placed[i] && (stuck < 0 || all[i].Call < all[stuck].Call) {
				stuck = i
			}
		}
		if stuck < 0 {
			continue // this key's ops all fit one order
		}
		s := all[stuck]
		out = append(out, fmt.Sprintf("key %s: %d of its %d ops fit one order, the next cannot: client %d's %s, sent at %s (+%v)",
			s.Key, len(longest), len(parts[p]), s.Client,
			describeOp(kvInput{put: s.Kind == "PUT", key: s.Key, value: s.Value}, kvOutput{answer: s.Answer, unknown: s.Unknown}),
			h.At(s.Call).Format("15:04:05.000"), round(s.Call)))
	}
	return out
}
