package kvclient

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ReadBack is the outcome of reading back every key a run wrote.
type ReadBack struct {
	Keys int
	// Mismatches describes each key whose value is not one the history
	// allows.
	Mismatches []string
}

// ReadBackKeys reads every key the PUTs in h wrote, over c, after the run
// has ended, and checks each value against the history: it must be the
// value of an acknowledged PUT that no later acknowledged PUT (invoked after
// it was acknowledged) overwrote, or of a PUT whose outcome is unknown; a
// key that only unknown PUTs wrote may also be NOTFOUND. The GETs are
// recorded in h as client client, so CheckLinearizable covers them too.
// It stops at the first failed request.
func ReadBackKeys(ctx context.Context, c *Conn, h *History, client int, timeout time.Duration) (ReadBack, error) {
	allowed := allowedFinalValues(h.Ops())
	keys := make([]string, 0, len(allowed))
	for k := range allowed {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	rb := ReadBack{Keys: len(keys)}
	for _, k := range keys {
		op := Op{Client: client, Kind: "GET", Key: k, Call: h.now()}
		reply, err := c.Do(ctx, "GET "+k, timeout)
		if err != nil {
			op.Unknown, op.Err = true, err.Error()
			h.add(op)
			return rb, fmt.Errorf("read back %s: %w", k, err)
		}
		op.Return, op.Answer = h.now(), reply
		h.add(op)
		if !slices.Contains(allowed[k], reply) {
			rb.Mismatches = append(rb.Mismatches, fmt.Sprintf("%s: got %q, want %s", k, clip(reply), describeAllowed(allowed[k])))
		}
	}
	return rb, nil
}

// allowedFinalValues maps each key PUT in ops to the GET answers that may
// follow the whole history.
func allowedFinalValues(ops []Op) map[string][]string {
	acked := map[string][]Op{}
	unknown := map[string][]Op{}
	for _, o := range ops {
		switch {
		case o.Kind != "PUT":
		case o.Unknown:
			unknown[o.Key] = append(unknown[o.Key], o)
		default:
			acked[o.Key] = append(acked[o.Key], o)
		}
	}
	allowed := map[string][]string{}
	for k, us := range unknown {
		for _, u := range us {
			allowed[k] = append(allowed[k], "VALUE "+u.Value)
		}
		if len(acked[k]) == 0 {
			allowed[k] = append(allowed[k], "NOTFOUND")
		}
	}
	for k, as := range acked {
		// An acknowledged PUT is overwritten for sure by an acknowledged
		// PUT invoked after its acknowledgement; the rest may be last.
		var lastCall time.Duration
		for _, a := range as {
			lastCall = max(lastCall, a.Call)
		}
		for _, a := range as {
			if a.Return >= lastCall {
				allowed[k] = append(allowed[k], "VALUE "+a.Value)
			}
		}
	}
	return allowed
}

func describeAllowed(answers []string) string {
	if len(answers) == 1 {
		return fmt.Sprintf("%q", clip(answers[0]))
	}
	quoted := make([]string, len(answers))
	for i, a := range answers {
		quoted[i] = fmt.Sprintf("%q", clip(a))
	}
	return "one of " + strings.Join(quoted, ", ")
}
