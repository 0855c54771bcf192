package initramfs

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/ftvm/ftvm/internal/hostsetup"
)

func needCpio(t *testing.T) {
	t.Helper()
	if err := hostsetup.Ensure(context.Background(), os.Stderr, hostsetup.Requirement{Path: "cpio", Package: "cpio"}); err != nil {
		t.Fatalf("GNU cpio is needed to cross-check the format: %v", err)
	}
}

// TestGNUCpioReadsOurs checks that GNU cpio lists and extracts what we write.
func TestGNUCpioReadsOurs(t *testing.T) {
	needCpio(t)
	archive := filepath.Join(t.TempDir(), "a.cpio")
	if err := os.WriteFile(archive, sample(t), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := exec.Command("sh", "-c", "cpio -t --quiet < "+archive).CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, list)
	}
	want := "dev dev/console init lib lib/modules lib/modules/6.1 lib/modules/6.1/x.ko etc etc/empty sbin sbin/init tmp"
	if got := strings.Join(strings.Fields(string(list)), " "); got != want {
		t.Fatalf("cpio -t lists\n%s\nwant\n%s", got, want)
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "cpio -i -d --quiet --no-absolute-filenames < "+archive)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "lib/modules/6.1/x.ko"))
	if err != nil || !bytes.Equal(data, bytes.Repeat([]byte{0xAB}, 1001)) {
		t.Fatalf("extracted x.ko: %d bytes, %v", len(data), err)
	}
	fi, err := os.Stat(filepath.Join(dir, "init"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("extracted init: %v %v", fi, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "sbin/init")); err != nil || target != "../init" {
		t.Fatalf("extracted symlink: %q %v", target, err)
	}
	fi, err = os.Lstat(filepath.Join(dir, "dev/console"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode()&os.ModeCharDevice == 0 || st.Rdev != 5<<8|1 {
		t.Fatalf("extracted dev/console: mode %v rdev %#x", fi.Mode(), st.Rdev)
	}
	if fi, err := os.Stat(filepath.Join(dir, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 {
		t.Fatalf("extracted tmp: %v %v", fi, err)
	}
}

// TestWeReadGNUCpio checks that our reader accepts what GNU cpio writes.
func TestWeReadGNUCpio(t *testing.T) {
	needCpio(t)
	src := t.TempDir()
	files := map[string]string{"a.txt": "alpha\n", "sub/b.bin": strings.Repeat("b", 5000), "sub/deeper/c": ""}
	for name, data := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "find . -mindepth 1 -printf '%P\\n' | sort | cpio -o -H newc --quiet")
	cmd.Dir = src
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("cpio -o: %v\n%s", err, stderr.String())
	}
	r := NewReader(bytes.NewReader(out.Bytes()))
	got := map[string]string{}
	var names []string
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		switch {
		case h.Mode&ModeTypeMask == ModeRegular:
			if h.FileMode().Perm() != 0o640 {
				t.Errorf("%s: mode %o", h.Name, h.Mode)
			}
			got[h.Name] = string(data)
		case h.Mode&ModeTypeMask == ModeSymlink:
			got[h.Name] = "->" + string(data)
		}
	}
	sort.Strings(names)
	if strings.Join(names, " ") != "a.txt link sub sub/b.bin sub/deeper sub/deeper/c" {
		t.Fatalf("names %v", names)
	}
	for name, data := range files {
		if got[name] != data {
			t.Errorf("%s: got %d bytes, want %d", name, len(got[name]), len(data))
		}
	}
	if got["link"] != "->a.txt" {
		t.Errorf("link: %q", got["link"])
	}
	// GNU's archive is itself canonical newc, so it must round trip exactly too.
	rewritten, consumed, _, err := copyArchive(out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rewritten[:consumed], out.Bytes()[:consumed]) {
		t.Fatal("GNU cpio archive does not round trip byte for byte")
	}
}
