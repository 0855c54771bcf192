package images

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const zeroSum = "0000000000000000000000000000000000000000000000000000000000000000"

func validManifest() Manifest {
	return Manifest{
		Format: ManifestFormat, Kernel: VmlinuxName, BzImage: BzImageName, Initrd: InitrdName,
		Cmdline: DefaultCmdline,
		SHA256:  map[string]string{VmlinuxName: zeroSum, BzImageName: zeroSum, InitrdName: zeroSum},
	}
}

func TestDecodeManifest(t *testing.T) {
	good, err := validManifest().Encode()
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeManifest(good)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, validManifest()) {
		t.Fatalf("round trip: %+v", m)
	}
	edit := func(f func(m *Manifest)) []byte {
		m := validManifest()
		m.SHA256 = map[string]string{VmlinuxName: zeroSum, BzImageName: zeroSum, InitrdName: zeroSum}
		f(&m)
		b, _ := m.Encode()
		return b
	}
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"not json":      {[]byte("{"), "malformed JSON"},
		"trailing":      {append(append([]byte(nil), good...), "{}"...), "trailing data"},
		"unknown field": {[]byte(`{"format":1,"bogus":1}`), "unknown field"},
		"format":        {edit(func(m *Manifest) { m.Format = 2 }), "format 2"},
		"abs path":      {edit(func(m *Manifest) { m.Kernel = "/etc/passwd" }), "kernel: path \"/etc/passwd\""},
		"escape":        {edit(func(m *Manifest) { m.Initrd = "../x" }), "inside the image directory"},
		"same file":     {edit(func(m *Manifest) { m.BzImage = VmlinuxName }), "name the same file"},
		"no sum":        {edit(func(m *Manifest) { delete(m.SHA256, InitrdName) }), "no sha256 for \"initrd.img\""},
		"bad sum":       {edit(func(m *Manifest) { m.SHA256[InitrdName] = "xyz" }), "not 64 lower-case hex"},
		"extra sum":     {edit(func(m *Manifest) { m.SHA256["other"] = zeroSum }), "not a file of the image"},
		"no cmdline":    {edit(func(m *Manifest) { m.Cmdline = " " }), "empty default cmdline"},
	} {
		if _, err := DecodeManifest(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want error containing %q", name, err, tc.want)
		}
	}
}

func FuzzDecodeManifest(f *testing.F) {
	good, _ := validManifest().Encode()
	f.Add(good)
	f.Add([]byte(`{"format":1}`))
	f.Add([]byte(`{"format":1,"kernel":"a","bzimage":"b","initrd":"c","cmdline":"x","sha256":{"a":"` + zeroSum + `"}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := DecodeManifest(in)
		if err != nil {
			return
		}
		out, err := m.Encode()
		if err != nil {
			t.Fatalf("accepted manifest does not encode: %v", err)
		}
		m2, err := DecodeManifest(out)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("accepted manifest does not round trip: %v\n%+v\n%+v", err, m, m2)
		}
	})
}

// fakeImage writes a small image whose files pass the format checks: the
// test binary itself serves as an x86-64 ELF "kernel".
func fakeImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	elfData, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bz := make([]byte, 4096)
	copy(bz[0x202:], "HdrS")
	bz[0x1f1] = 1 // one setup sector
	bz[0x1f4] = 4 // 64 bytes of protected-mode code
	var initrd bytes.Buffer
	initBin := filepath.Join(dir, "init.src")
	if err := os.WriteFile(initBin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WriteInitrd(&initrd, initBin); err != nil {
		t.Fatal(err)
	}
	os.Remove(initBin)
	m := validManifest()
	for name, data := range map[string][]byte{VmlinuxName: elfData, BzImageName: bz, InitrdName: initrd.Bytes()} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		sum, err := fileSHA256(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		m.SHA256[name] = sum
	}
	data, _ := m.Encode()
	if err := os.WriteFile(filepath.Join(dir, ManifestName), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// rehash updates the manifest after a deliberate change, so that only the
// format check can catch it.
func rehash(t *testing.T, dir, name string) {
	t.Helper()
	m, err := DecodeManifest(must(os.ReadFile(filepath.Join(dir, ManifestName))))
	if err != nil {
		t.Fatal(err)
	}
	if m.SHA256[name], err = fileSHA256(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	data, _ := m.Encode()
	if err := os.WriteFile(filepath.Join(dir, ManifestName), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestInspectErrors(t *testing.T) {
	if _, err := Inspect(fakeImage(t)); err != nil {
		t.Fatalf("fake image: %v", err)
	}
	truncate := func(name string, size int64) func(dir string) {
		return func(dir string) {
			if err := os.Truncate(filepath.Join(dir, name), size); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, tc := range map[string]struct {
		break_ func(dir string)
		want   []string
	}{
		"no manifest": {func(dir string) { os.Remove(filepath.Join(dir, ManifestName)) },
			[]string{"manifest.json: no such file", "ftctl image build --out"}},
		"bad manifest": {func(dir string) { os.WriteFile(filepath.Join(dir, ManifestName), []byte("{\"format\":1,"), 0o644) },
			[]string{"manifest.json: malformed JSON", "rebuild with: ftctl image build"}},
		"missing initrd": {func(dir string) { os.Remove(filepath.Join(dir, InitrdName)) },
			[]string{"initrd ", "initrd.img: no such file", "rebuild with"}},
		"wrong hash": {func(dir string) { os.WriteFile(filepath.Join(dir, InitrdName), []byte("\x1f\x8bxx"), 0o644) },
			[]string{"initrd.img: sha256", "changed or is corrupt"}},
		"truncated vmlinux": {func(dir string) { truncate(VmlinuxName, 100)(dir); rehash(t, dir, VmlinuxName) },
			[]string{"kernel ", "vmlinux: not a valid ELF kernel"}},
		"half vmlinux": {func(dir string) {
			fi, _ := os.Stat(filepath.Join(dir, VmlinuxName))
			truncate(VmlinuxName, fi.Size()/2)(dir)
			rehash(t, dir, VmlinuxName)
		}, []string{"vmlinux: "}},
		"bzImage not bzImage": {func(dir string) {
			os.WriteFile(filepath.Join(dir, BzImageName), make([]byte, 4096), 0o644)
			rehash(t, dir, BzImageName)
		}, []string{"bzImage: no \"HdrS\""}},
		"bzImage truncated": {func(dir string) { truncate(BzImageName, 0x300)(dir); rehash(t, dir, BzImageName) },
			[]string{"bzImage: truncated: header announces 1088 bytes"}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := fakeImage(t)
			tc.break_(dir)
			_, err := Inspect(dir)
			if err == nil {
				t.Fatal("Inspect accepted a broken image")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestGuestExitStatus(t *testing.T) {
	for _, tc := range []struct {
		console string
		status  int
		ok      bool
	}{
		{"ftvm-guest ready\nftvm-guest exit status=0\n", 0, true},
		{"boot\nftvm-guest exit status=3\r\n[ 1.0] reboot: Power down\n", 3, true},
		{"ftvm-guest exit status=1\nftvm-guest exit status=2", 2, true},
		{"no init line at all\n", 0, false},
		{"echo ftvm-guest exit status=1 from a user\n", 0, false}, // not at a line start
		{"ftvm-guest exit status=x\n", 0, false},
	} {
		s, ok := GuestExitStatus(tc.console)
		if s != tc.status || ok != tc.ok {
			t.Errorf("GuestExitStatus(%q) = %d, %v; want %d, %v", tc.console, s, ok, tc.status, tc.ok)
		}
	}
}

func TestCheckWorkload(t *testing.T) {
	m := Manifest{Workloads: []string{"cpu", "kv", "none"}}
	for cmdline, want := range map[string]string{
		"console=ttyS0":                        "",
		"ftvm.workload=kv":                     "",
		"ftvm.workload=bogus ftvm.workload=kv": "", // the last one wins, as in /init
		"ftvm.workload=kv ftvm.workload=kvv":   "ftvm.workload=kvv: this image's /init has no such workload; it has cpu, kv, none",
		"quiet ftvm.workload= console=ttyS0":   "ftvm.workload=: this image's /init has no such workload",
	} {
		err := m.CheckWorkload(cmdline)
		if (err == nil) != (want == "") || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("CheckWorkload(%q) = %v, want %q", cmdline, err, want)
		}
	}
	if err := (Manifest{}).CheckWorkload("ftvm.workload=anything"); err != nil {
		t.Errorf("an image without a workload list refused: %v", err)
	}
}
