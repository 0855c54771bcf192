// Package kernel owns the ftvm guest kernel: the committed config fragment
// (ftvm.config, merged on top of `make tinyconfig`), the committed source
// patches (patches/NNNN-*.patch, applied in order; today: no RDTSC in the
// kernel and emulated user RDTSC when the CPU has no TSC) and the builder
// that compiles Debian's linux-source-6.1 with them and caches vmlinux and
// bzImage outside the repository, keyed by the fragment, the patches and
// the source version.
package kernel

import (
	"bufio"
	"bytes"
	_ "embed"
	"fmt"
	"regexp"
	"strings"
)

// Fragment is the committed config fragment.
//
//go:embed ftvm.config
var fragment []byte

// Fragment returns a copy of the committed config fragment.
func Fragment() []byte { return bytes.Clone(fragment) }

// Option is one symbol assignment of a config fragment. Value is "n" for
// "# CONFIG_X is not set".
type Option struct {
	Name  string // without the CONFIG_ prefix
	Value string
	Line  int
}

var (
	setRe   = regexp.MustCompile(`^CONFIG_([A-Za-z0-9_]+)=(.*)$`)
	unsetRe = regexp.MustCompile(`^# CONFIG_([A-Za-z0-9_]+) is not set$`)
)

// ParseConfig reads the assignments of a .config or a fragment; other
// comments and blank lines are skipped. A fragment must not assign a symbol
// twice (the later one would silently win).
func ParseConfig(data []byte) ([]Option, error) {
	var opts []Option
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		var o Option
		if m := setRe.FindStringSubmatch(line); m != nil {
			o = Option{Name: m[1], Value: m[2], Line: n}
		} else if m := unsetRe.FindStringSubmatch(line); m != nil {
			o = Option{Name: m[1], Value: "n", Line: n}
		} else if line == "" || strings.HasPrefix(line, "#") {
			continue
		} else {
			return nil, fmt.Errorf("line %d: %q is neither CONFIG_X=value nor a comment", n, line)
		}
		if prev, ok := seen[o.Name]; ok {
			return nil, fmt.Errorf("line %d: CONFIG_%s already set on line %d", n, o.Name, prev)
		}
		seen[o.Name] = n
		opts = append(opts, o)
	}
	return opts, sc.Err()
}

// Verify checks that every option of the fragment has the requested value
// in the final .config (a symbol absent from .config counts as "n"), and
// names every one that does not.
func Verify(fragment, final []byte) error {
	want, err := ParseConfig(fragment)
	if err != nil {
		return fmt.Errorf("parse config fragment: %w", err)
	}
	got := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(final))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := setRe.FindStringSubmatch(line); m != nil {
			got[m[1]] = m[2]
		} else if m := unsetRe.FindStringSubmatch(line); m != nil {
			got[m[1]] = "n"
		}
	}
	var bad []string
	for _, o := range want {
		v, ok := got[o.Name]
		if !ok {
			v = "n"
		}
		if v != o.Value {
			shown := v
			if !ok {
				shown = "absent (n)"
			}
			bad = append(bad, fmt.Sprintf("CONFIG_%s=%s requested (fragment line %d) but .config has %s", o.Name, o.Value, o.Line, shown))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("kernel config lacks %d requested option(s) (unmet dependency or unknown symbol; see make menuconfig's help for each):\n  %s",
			len(bad), strings.Join(bad, "\n  "))
	}
	return nil
}
