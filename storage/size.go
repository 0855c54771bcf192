package storage

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize parses a disk size such as "512M", "1G", "10GiB", "4096" or
// "64k". Units are powers of 1024, as in qemu-img and most VMMs: K/KiB, M/MiB,
// G/GiB, T/TiB (case-insensitive), and an optional B for bytes. Decimal units
// (KB, MB, GB, TB) are refused rather than guessed, because "1GB" means 10^9
// to some people and 2^30 to others. The number is a whole number.
func ParseSize(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("size is empty: want a number with an optional unit, like 512M or 10GiB")
	}
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q does not start with a whole number (like 512M or 10GiB)", orig)
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: number %s is too large", orig, num)
	}
	var shift uint
	switch strings.ToLower(unit) {
	case "", "b":
		shift = 0
	case "k", "kib":
		shift = 10
	case "m", "mib":
		shift = 20
	case "g", "gib":
		shift = 30
	case "t", "tib":
		shift = 40
	case "kb", "mb", "gb", "tb":
		return 0, fmt.Errorf("size %q: unit %s is ambiguous; use %s or %siB (powers of 1024)",
			orig, unit, strings.ToUpper(unit[:1]), strings.ToUpper(unit[:1]))
	default:
		if strings.Contains(unit, ".") || strings.HasPrefix(unit, ",") {
			return 0, fmt.Errorf("size %q: only whole numbers are accepted (write 1536M, not 1.5G)", orig)
		}
		return 0, fmt.Errorf("size %q: unknown unit %q (want K, M, G, T or KiB, MiB, GiB, TiB)", orig, unit)
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q is too large", orig)
	}
	return n << shift, nil
}

// FormatSize renders a byte count with the largest binary unit that divides
// it exactly (so that ParseSize(FormatSize(n)) == n), e.g. "1GiB", "1536MiB".
func FormatSize(n int64) string {
	units := []struct {
		shift uint
		name  string
	}{{40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}}
	if n > 0 {
		for _, u := range units {
			if n%(int64(1)<<u.shift) == 0 {
				return fmt.Sprintf("%d%s", n>>u.shift, u.name)
			}
		}
	}
	return fmt.Sprintf("%dB", n)
}
