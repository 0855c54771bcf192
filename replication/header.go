package replication

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ftvm/ftvm/instance"
)

// headerVersion is the start header's format.
const headerVersion = 1

// startHeader is the log's first entry: what the primary booted, so the
// backup starts from the same initial state or refuses with a reason.
type startHeader struct {
	Version      int       `json:"version"`
	KernelSHA256 string    `json:"kernel_sha256"`
	InitrdSHA256 string    `json:"initrd_sha256"`
	Cmdline      string    `json:"cmdline"`
	MemoryMiB    int       `json:"memory_mib"`
	WallTime     time.Time `json:"wall_time"`
	NIC          bool      `json:"nic"`
	MAC          string    `json:"mac"`
	Disks        []string  `json:"disks"`
}

// maxHeader bounds the header a backup decodes (untrusted bytes).
const maxHeader = 64 << 10

func newHeader(cfg instance.Config, wall time.Time) (startHeader, error) {
	boot, err := instance.ResolveBoot(cfg)
	if err != nil {
		return startHeader{}, err
	}
	if boot.KernelSHA256 == "" {
		if boot.KernelSHA256, err = fileSHA256(boot.Kernel); err != nil {
			return startHeader{}, err
		}
	}
	if boot.InitrdSHA256 == "" && boot.Initrd != "" {
		if boot.InitrdSHA256, err = fileSHA256(boot.Initrd); err != nil {
			return startHeader{}, err
		}
	}
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = 256 // vm's default, spelled out so both sides compare it
	}
	mac := cfg.MAC
	if mac == "" && cfg.NetSocket != "" {
		mac = instance.DefaultMAC
	}
	return startHeader{
		Version: headerVersion, KernelSHA256: boot.KernelSHA256, InitrdSHA256: boot.InitrdSHA256,
		Cmdline: boot.Cmdline, MemoryMiB: mem, WallTime: wall.UTC(),
		NIC: cfg.NetSocket != "", MAC: strings.ToLower(mac), Disks: cfg.Disks,
	}, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (h startHeader) encode() ([]byte, error) { return json.Marshal(h) }

func decodeHeader(b []byte) (startHeader, error) {
	var h startHeader
	if len(b) > maxHeader {
		return h, fmt.Errorf("start header of %d bytes exceeds %d", len(b), maxHeader)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("start header: %w", err)
	}
	if h.Version != headerVersion {
		return h, fmt.Errorf("start header version %d, this backup reads %d (run the same ftvm version on both sides)", h.Version, headerVersion)
	}
	return h, nil
}

// mismatch names the first difference between the primary's header and
// the backup's own, or "".
func (h startHeader) mismatch(own startHeader) string {
	switch {
	case h.KernelSHA256 != own.KernelSHA256:
		return fmt.Sprintf("kernel differs (primary sha256 %.12s, backup %.12s)", h.KernelSHA256, own.KernelSHA256)
	case h.InitrdSHA256 != own.InitrdSHA256:
		return fmt.Sprintf("initrd differs (primary sha256 %.12s, backup %.12s)", h.InitrdSHA256, own.InitrdSHA256)
	case h.Cmdline != own.Cmdline:
		return fmt.Sprintf("kernel command line differs: primary %q, backup %q", h.Cmdline, own.Cmdline)
	case h.MemoryMiB != own.MemoryMiB:
		return fmt.Sprintf("memory differs: primary %d MiB, backup %d MiB", h.MemoryMiB, own.MemoryMiB)
	case h.NIC != own.NIC || h.MAC != own.MAC:
		return fmt.Sprintf("NIC differs: primary %v %s, backup %v %s", h.NIC, h.MAC, own.NIC, own.MAC)
	case strings.Join(h.Disks, ",") != strings.Join(own.Disks, ","):
		return fmt.Sprintf("disks differ: primary %v, backup %v", h.Disks, own.Disks)
	}
	return ""
}
