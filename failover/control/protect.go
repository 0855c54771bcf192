package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
)

// Protector makes the VM behind a control socket the primary of a new
// pair while it runs: it copies the running guest to the backup listening
// at addr and replicates to it (replication.Protect), and returns how the
// copy went. A VM that cannot be protected now says why.
type Protector func(ctx context.Context, addr string) (string, error)

// protectors is where a control socket finds its Protector: a VMM sets it
// once its VM runs (and can be protected).
type protectors struct {
	fn atomic.Pointer[Protector]
}

// SetProtector lets POST /protect protect the VM from now on (nil: no
// more).
func (p *Pending) SetProtector(fn Protector) {
	if fn == nil {
		p.protect.fn.Store(nil)
		return
	}
	p.protect.fn.Store(&fn)
}

// serveProtect is POST /protect?backup=ADDR: it runs the protector and
// answers 200 with its report, 409 when nothing can be protected here,
// 400 without an address, 500 when protecting failed.
func serveProtect(src Source) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		pend, ok := src.(*Pending)
		var fn *Protector
		if ok {
			fn = pend.protect.fn.Load()
		}
		if fn == nil {
			http.Error(w, "this VM cannot be protected now: only a VM running alone with --control, or a backup that went live, can be", http.StatusConflict)
			return
		}
		addr := r.URL.Query().Get("backup")
		if addr == "" {
			http.Error(w, "no backup address: POST /protect?backup=ADDR (the new backup's --listen)", http.StatusBadRequest)
			return
		}
		report, err := (*fn)(r.Context(), addr)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"protected": report})
	}
}

// Protect asks the VMM at the control socket path to protect its VM with
// the backup listening at backup; it waits for the copy to end.
func Protect(ctx context.Context, path, backup string) (string, error) {
	return post(ctx, path, "/protect?backup="+url.QueryEscape(backup), "protected")
}

// post makes a POST request of the control socket at path and returns
// the answer's field key.
func post(ctx context.Context, path, target, key string) (string, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://control"+target, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return "", fmt.Errorf("control socket %s: %w (%v)", path, ErrGone, op.Err)
		}
		return "", fmt.Errorf("control socket %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s through %s: %s", key, path, strings.TrimSpace(string(body)))
	}
	var out map[string]string
	if err := json.Unmarshal(body, &out); err != nil {
		return "", fmt.Errorf("%s through %s: decode the answer: %w", key, path, err)
	}
	return out[key], nil
}

// Snapshotter writes a snapshot of the VM behind a control socket to a
// file while it runs (at its next exit) and says what it wrote.
type Snapshotter func(ctx context.Context, file string) (string, error)

// SetSnapshotter lets POST /snapshot snapshot the VM from now on.
func (p *Pending) SetSnapshotter(fn Snapshotter) {
	if fn == nil {
		p.snapshot.Store(nil)
		return
	}
	p.snapshot.Store(&fn)
}

// serveSnapshot is POST /snapshot?file=PATH.
func serveSnapshot(src Source) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		pend, ok := src.(*Pending)
		var fn *Snapshotter
		if ok {
			fn = pend.snapshot.Load()
		}
		if fn == nil {
			http.Error(w, "this VM cannot be snapshotted now: a backup replays the primary's log (snapshot the primary or a VM alone)", http.StatusConflict)
			return
		}
		file := r.URL.Query().Get("file")
		if file == "" {
			http.Error(w, "no file: POST /snapshot?file=PATH", http.StatusBadRequest)
			return
		}
		report, err := (*fn)(r.Context(), file)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"snapshot": report})
	}
}

// Snapshot asks the VMM at the control socket path to write a snapshot of
// its running VM to file (a path on the VMM's host).
func Snapshot(ctx context.Context, path, file string) (string, error) {
	return post(ctx, path, "/snapshot?file="+url.QueryEscape(file), "snapshot")
}
