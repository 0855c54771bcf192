// Command benchreport turns the log of the replication benchmark suite
// (BenchmarkSuite in package replication) into BENCHMARKS.md and its
// plots. It reads the JSON line each case logs; it measures nothing itself.
//
//	go run ./testbench/benchreport -in out/bench/suite.txt -md BENCHMARKS.md -plots docs/bench
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// resultPrefix starts the log line that holds one case's JSON (the
// benchmark's suiteResultPrefix).
const resultPrefix = "ftvm-suite-result "

// Result is one case of the suite, as BenchmarkSuite logs it (its
// SuiteResult); fields this tool does not know are ignored.
type Result struct {
	Case                               string
	Host                               string
	SoloSeconds, PairSeconds, Speed    float64
	SoloRuns                           []float64
	LogMbps, InputMbps, CheckpointMbps float64
	Kicks, KicksFound                  uint64
	KicksUser, KicksKernel             uint64
	TopKernel                          []Symbol
	BootSeconds                        float64
	BootKicks, BootKicksUser           uint64
	BootTopKernel                      []Symbol
	ExitsPerSec                        float64
	TopPorts                           []string
	LagP50ms, LagP99ms                 float64
	FrameHoldP50ms, RTTms              float64
	SoloEchoP50ms, PairEchoP50ms       float64
	SoloEchoP99ms, PairEchoP99ms       float64
	Frames, Checkpoints, Digests       uint64
}

// Symbol is a kernel function and the kicks that stopped in it.
type Symbol struct {
	Name  string `json:"name"`
	Kicks uint64 `json:"kicks"`
}

// maxLine bounds one line of the log: a result line is a few KiB.
const maxLine = 1 << 20

// Parse reads the benchmark log and returns the results in the order they
// appear. A later result for a case replaces an earlier one (a log of two
// runs reports the second). A result line that does not decode is an
// error naming its line; a log without any is one too.
func Parse(r io.Reader) ([]Result, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	var out []Result
	for n := 1; sc.Scan(); n++ {
		_, js, ok := strings.Cut(sc.Text(), resultPrefix)
		if !ok {
			continue
		}
		var res Result
		if err := json.Unmarshal([]byte(js), &res); err != nil {
			return nil, fmt.Errorf("line %d: a suite result that does not decode: %w", n, err)
		}
		if res.Case == "" {
			return nil, fmt.Errorf("line %d: a suite result without a case name", n)
		}
		replaced := false
		for i := range out {
			if out[i].Case == res.Case {
				out[i], replaced = res, true
			}
		}
		if !replaced {
			out = append(out, res)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the benchmark log: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %q line in the log: did BenchmarkSuite run (go test -run '^$' -bench BenchmarkSuite -benchtime 1x ./replication/)?", strings.TrimSpace(resultPrefix))
	}
	return out, nil
}
