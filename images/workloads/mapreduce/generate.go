package mapreduce

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// GenerateSplits makes n texts of random words from a small vocabulary
// (so keys repeat across splits) with digits inside tokens, punctuation
// and mixed case. The same n and seed give the same splits on every
// machine: a guest can make a job's inputs from a seed on its command
// line while the host computes the expected output from the same call.
func GenerateSplits(n int, seed uint64) []Split {
	rng := rand.New(rand.NewPCG(seed, 1))
	vocab := []string{"raft", "Raft", "log", "leader", "term", "vote", "map", "reduce", "split", "key",
		"value", "worker", "master", "disk", "fault", "tolerant", "replica", "primary", "backup", "exit"}
	var splits []Split
	for i := range n {
		var b strings.Builder
		for w := range 300 + rng.IntN(300) {
			b.WriteString(vocab[rng.IntN(len(vocab))])
			if rng.IntN(7) == 0 {
				fmt.Fprintf(&b, "%d", rng.IntN(5)) // a word break inside a token
			}
			switch {
			case w%13 == 12:
				b.WriteString(".\n")
			case rng.IntN(5) == 0:
				b.WriteString(", ")
			default:
				b.WriteString(" ")
			}
		}
		splits = append(splits, Split{Name: fmt.Sprintf("input-%d.txt", i), Data: []byte(b.String())})
	}
	return splits
}
