package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ftvm/ftvm/internal/unixsock"
)

// Handler serves GET /status (JSON) and GET /metrics (Prometheus text)
// from src.
func Handler(src Source) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{src})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(src.Status())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /protect", serveProtect(src))
	mux.HandleFunc("POST /snapshot", serveSnapshot(src))
	return mux
}

// Listen listens on the unix socket path (replacing a socket a dead VMM
// left there) and serves src on it in the background until Close.
func Listen(path string, src Source, log *slog.Logger) (*Server, error) {
	ln, err := unixsock.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &Server{
		http: &http.Server{Handler: Handler(src), ReadHeaderTimeout: 5 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && log != nil {
			log.Warn("control socket stopped", "socket", path, "err", err)
		}
	}()
	return s, nil
}

// Server is a control socket being served.
type Server struct {
	http *http.Server
	done chan struct{}
}

// Close stops serving and removes the socket file.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.http.Shutdown(ctx)
	<-s.done
	return err
}

// ErrGone: nothing answers on the control socket (the side's process
// is gone, or never started).
var ErrGone = errors.New("gone")

// Get reads the status from the control socket at path. A socket that is
// missing or refuses the connection is ErrGone.
func Get(ctx context.Context, path string) (Status, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://control/status", nil)
	if err != nil {
		return Status{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return Status{}, fmt.Errorf("control socket %s: %w (%v)", path, ErrGone, op.Err)
		}
		return Status{}, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Status{}, fmt.Errorf("control socket %s: GET /status: %s", path, resp.Status)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return Status{}, fmt.Errorf("control socket %s: decode the status: %w", path, err)
	}
	return st, nil
}
