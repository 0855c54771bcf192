package raftkv

import (
	"fmt"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// ModelInput and ModelOutput are one operation as porcupine sees it.
type ModelInput struct {
	Kind  OpKind
	Key   string
	Value string
}

type ModelOutput struct {
	Value string // Get's result
}

// Model is the sequential specification of the service for porcupine:
// a string per key, partitioned by key (keys are independent).
func Model() porcupine.Model {
	return porcupine.Model{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range h {
				k := op.Input.(ModelInput).Key
				if _, ok := byKey[k]; !ok {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			var parts [][]porcupine.Operation
			for _, k := range keys {
				parts = append(parts, byKey[k])
			}
			return parts
		},
		Init: func() any { return "" },
		Step: func(state, input, output any) (bool, any) {
			s, in := state.(string), input.(ModelInput)
			out, _ := output.(ModelOutput) // nil for a Put or Append recorded without one
			switch in.Kind {
			case OpGet:
				return out.Value == s, s
			case OpPut:
				return true, in.Value
			case OpAppend:
				return true, s + in.Value
			}
			return false, s
		},
		DescribeOperation: func(input, output any) string {
			in := input.(ModelInput)
			out, _ := output.(ModelOutput)
			if in.Kind == OpGet {
				return fmt.Sprintf("Get(%q) -> %q", in.Key, out.Value)
			}
			return fmt.Sprintf("%v(%q, %q)", in.Kind, in.Key, in.Value)
		},
	}
}

// History records operations as clients see them: invoked at call,
// completed at return, on one monotonic clock.
type History struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func NewHistory() *History { return &History{start: time.Now()} }

// Now is the history's clock.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Add records one operation. An op whose outcome is unknown (the client
// gave up) is recorded by the caller with Return set to math.MaxInt64 if
// it may have taken effect, or not at all if it is a Get.
func (h *History) Add(client int, in ModelInput, out ModelOutput, call, ret int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
}

// Operations returns a copy of the recorded operations.
func (h *History) Operations() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]porcupine.Operation(nil), h.ops...)
}

// Check runs porcupine on the history with a time limit; an Unknown
// result (the limit hit) is an error too, so a check never passes by
// running out of time.
func (h *History) Check(timeout time.Duration) error {
	ops := h.Operations()
	switch res := porcupine.CheckOperationsTimeout(Model(), ops, timeout); res {
	case porcupine.Ok:
		return nil
	case porcupine.Illegal:
		return fmt.Errorf("history of %d operations is not linearizable", len(ops))
	default:
		return fmt.Errorf("linearizability check of %d operations inconclusive after %v", len(ops), timeout)
	}
}
