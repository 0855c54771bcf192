package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sampleLog = `goos: linux
BenchmarkSuite/cpu-2    1    1 ns/op    0.25 speed
    suite_bench_test.go:140: ftvm-suite-result {"case":"cpu","host":"nested","SoloSeconds":10,"PairSeconds":40,"Speed":0.25,"LogMbps":2.5,"InputMbps":0.5,"CheckpointMbps":2,"Kicks":200,"KicksUser":150,"KicksKernel":50,"TopKernel":[{"name":"clear_page_rep","kicks":30}]}
BenchmarkSuite/db-2     1    1 ns/op
    suite_bench_test.go:140: ftvm-suite-result {"case":"db","host":"nested","SoloSeconds":20,"PairSeconds":25,"Speed":0.8,"Kicks":10,"KicksFound":10}
    suite_bench_test.go:140: ftvm-suite-result {"case":"cpu","host":"nested","SoloSeconds":10,"PairSeconds":11,"Speed":0.91,"LogMbps":0.5,"Kicks":0}
PASS
`

func TestParseReadsEachCaseOnce(t *testing.T) {
	rs, err := Parse(strings.NewReader(sampleLog))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].Case != "cpu" || rs[1].Case != "db" {
		t.Fatalf("cases %+v, want cpu then db", rs)
	}
	if rs[0].Speed != 0.91 || rs[0].Kicks != 0 {
		t.Fatalf("cpu result %+v: the later line should have replaced the first", rs[0])
	}
	if rs[1].KicksFound != 10 || rs[1].PairSeconds != 25 {
		t.Fatalf("db result %+v", rs[1])
	}
}

func TestParseNamesTheBadLine(t *testing.T) {
	for _, c := range []struct{ log, want string }{
		{"x\nftvm-suite-result {\"case\":\n", "line 2"},
		{"ftvm-suite-result {}\n", "without a case name"},
		{"PASS\n", "did BenchmarkSuite run"},
	} {
		if _, err := Parse(strings.NewReader(c.log)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one saying %q", c.log, err, c.want)
		}
	}
}

func TestMarkdownHasTheTableAndVerdicts(t *testing.T) {
	rs := []Result{
		{Case: "cpu", Host: "nested", SoloSeconds: 10, SoloRuns: []float64{9, 11}, PairSeconds: 40, Speed: 0.25, LogMbps: 2.5, InputMbps: 0.5, CheckpointMbps: 2, Kicks: 200, KicksUser: 150, KicksKernel: 50,
			TopKernel: []Symbol{{"clear_page_rep", 30}}, BootSeconds: 12, BootKicks: 9, BootKicksUser: 3, BootTopKernel: []Symbol{{"memset", 7}}, ExitsPerSec: 410, TopPorts: []string{"0x40:99", "0x20:50"}},
		{Case: "kv", SoloEchoP50ms: 1, PairEchoP50ms: 3.5, RTTms: 0.4, FrameHoldP50ms: 2},
		{Case: "db", SoloSeconds: 20, PairSeconds: 25, Speed: 0.8, Kicks: 10, KicksFound: 10},
	}
	var b bytes.Buffer
	if err := Markdown(&b, rs, "2026-12-08", "docs/bench"); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"- Host: nested\n",
		"| cpu | 10.0 s (9.0, 11.0) | 40.0 s | **0.25** | 2.500 | 0.500 | 2.000 | 0.139 | 200 | 0 (0%) | 150 / 50 |",
		"| p50 | 1.00 ms | 3.50 ms | 2.50 ms |",
		"- **cpu**, boot: `memset` 7; work: `clear_page_rep` 30.",
		"| cpu | 12.0 s | 9 (33%) | 200 (75%) | 410 | 0x40:99 0x20:50 |",
		"| CPU-bound guest, log < 1 Mbit/s | 2.500 Mbit/s | **no** |",
		"| cpu: at most 5% of kicks fall back to a checkpoint | 100% of 200 | **no** |",
		"| disk-heavy guest, speed >= 0.8 (primary and backup on separate vCPUs) | 0.80, one shared vCPU | yes |",
		"| db: at most 5% of kicks fall back to a checkpoint | 0% of 10 | yes |",
		"| kv | 0.0 s | 0.0 s | **0.00** |",
		"![speed: guest alone time over pair time](docs/bench/speed.png)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("no %q in:\n%s", want, md)
		}
	}
}

func TestMarkdownSaysWhenThereWereNoKicks(t *testing.T) {
	var b bytes.Buffer
	if err := Markdown(&b, []Result{{Case: "db", Speed: 0.7}}, "d", "p"); err != nil {
		t.Fatal(err)
	}
	if want := "| db: at most 5% of kicks fall back to a checkpoint | no kicks in the work | yes |"; !strings.Contains(b.String(), want) {
		t.Fatalf("no %q in:\n%s", want, b.String())
	}
}

func TestPlotsWritesThreePNGs(t *testing.T) {
	dir := t.TempDir()
	rs := []Result{{Case: "cpu", Speed: 0.3, InputMbps: 0.1, CheckpointMbps: 3, KicksUser: 5, KicksKernel: 2}, {Case: "db", Speed: 0.5, InputMbps: 1, KicksUser: 1}}
	if err := Plots(rs, dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"speed.png", "log.png", "kicks.png"} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r := img.Bounds(); r.Dx() < 100 || r.Dy() < 100 {
			t.Fatalf("%s is %v", name, r)
		}
	}
}

func TestRunWritesTheReport(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "suite.txt")
	if err := os.WriteFile(in, []byte(sampleLog), 0o644); err != nil {
		t.Fatal(err)
	}
	md := filepath.Join(dir, "BENCHMARKS.md")
	if err := run(in, md, filepath.Join(dir, "docs", "bench")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil || !strings.Contains(string(b), "](docs/bench/log.png)") {
		t.Fatalf("report: %v\n%s", err, b)
	}
	if err := run(filepath.Join(dir, "missing.txt"), md, dir); err == nil {
		t.Fatal("a missing log was accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sampleLog)
	f.Add("ftvm-suite-result {\"case\":\"x\",\"TopKernel\":[{}]}")
	f.Fuzz(func(t *testing.T, log string) {
		rs, err := Parse(strings.NewReader(log))
		if err == nil {
			var b bytes.Buffer
			if err := Markdown(&b, rs, "d", "p"); err != nil {
				t.Fatal(err)
			}
		}
	})
}
