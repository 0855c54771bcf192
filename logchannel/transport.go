package logchannel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Dial connects to a backup listening on network ("tcp", "unix", ...) and
// addr and returns the primary's Sender. On TCP it needs cfg.Auth (see
// Config.Auth). ctx and cfg.HandshakeTimeout bound connecting and the
// handshake.
func Dial(ctx context.Context, network, addr string, cfg Config) (*Sender, error) {
	cfg = cfg.withDefaults()
	if err := checkCredentials(network, cfg, RoleSender); err != nil {
		return nil, fmt.Errorf("logchannel: dial %s %s: %w", network, addr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("logchannel: dial %s %s: %w", network, addr, err)
	}
	return NewSender(ctx, conn, cfg)
}

// Listener accepts primaries on the backup's side. It owns the listening
// socket; each Accept yields an independent Receiver.
type Listener struct {
	ln  net.Listener
	cfg Config
}

// Listen opens a listening socket for Accept. On TCP it needs cfg.Auth
// (see Config.Auth).
func Listen(ctx context.Context, network, addr string, cfg Config) (*Listener, error) {
	cfg = cfg.withDefaults()
	if err := checkCredentials(network, cfg, RoleReceiver); err != nil {
		return nil, fmt.Errorf("logchannel: listen %s %s: %w", network, addr, err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("logchannel: listen %s %s: %w", network, addr, err)
	}
	return &Listener{ln: ln, cfg: cfg}, nil
}

// Addr is the address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops listening; Receivers already accepted are unaffected.
func (l *Listener) Close() error { return l.ln.Close() }

// Accept waits for a primary, performs the handshake and returns the
// Receiver. ctx bounds the wait; cfg.HandshakeTimeout bounds each
// handshake. A peer that fails authentication (ErrAuth) was never this
// backup's primary: Accept logs it as a warning and keeps waiting, so that
// whoever can reach the port cannot stop the backup. Handshakes run side by
// side (up to maxHandshakes), so peers that connect and stay silent do not
// delay the primary behind them. Any other handshake failure is returned.
func (l *Listener) Accept(ctx context.Context) (*Receiver, error) {
	actx, cancel := context.WithCancel(ctx)
	type outcome struct {
		r   *Receiver
		err error
	}
	outcomes := make(chan outcome)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		slots := make(chan struct{}, maxHandshakes)
		for {
			select {
			case slots <- struct{}{}:
			case <-actx.Done():
				return
			}
			conn, err := l.acceptConn(actx)
			if err != nil {
				select {
				case outcomes <- outcome{err: err}:
				case <-actx.Done():
				}
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				hctx, hcancel := context.WithTimeout(actx, l.cfg.HandshakeTimeout)
				r, err := NewReceiver(hctx, conn, l.cfg)
				hcancel()
				<-slots
				select {
				case outcomes <- outcome{r, err}:
				case <-actx.Done(): // Accept has returned
					if r != nil {
						r.Close()
					}
				}
			}()
		}
	}()
	// Accept returns only once its goroutines are gone: the next Accept
	// must have the listener to itself.
	end := func(o outcome) (*Receiver, error) {
		cancel()
		wg.Wait()
		return o.r, o.err
	}
	for {
		select {
		case <-ctx.Done():
			return end(outcome{err: fmt.Errorf("logchannel: accept on %v: %w", l.ln.Addr(), ctx.Err())})
		case o := <-outcomes:
			if o.err == nil || !errors.Is(o.err, ErrAuth) {
				return end(o)
			}
			l.cfg.Logger.Warn("log channel: refused a peer; still waiting for the primary", "listen", l.ln.Addr().String(), "err", o.err)
		}
	}
}

// maxHandshakes bounds the handshakes one Accept runs at once.
const maxHandshakes = 16

func (l *Listener) acceptConn(ctx context.Context) (net.Conn, error) {
	if d, ok := l.ln.(interface{ SetDeadline(time.Time) error }); ok {
		stop := context.AfterFunc(ctx, func() { d.SetDeadline(time.Unix(1, 0)) })
		defer func() {
			if !stop() {
				d.SetDeadline(time.Time{})
			}
		}()
	}
	conn, err := l.ln.Accept()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("logchannel: accept on %v: %w", l.ln.Addr(), err)
	}
	return conn, nil
}

// Pipe connects a Sender and a Receiver in memory (net.Pipe), for tests
// and single-process setups.
func Pipe(ctx context.Context, senderCfg, receiverCfg Config) (*Sender, *Receiver, error) {
	a, b := net.Pipe()
	return Connect(ctx, a, b, senderCfg, receiverCfg)
}

// Connect runs both handshakes concurrently over an existing pair of
// connected conns (a: primary's end, b: backup's end).
func Connect(ctx context.Context, a, b net.Conn, senderCfg, receiverCfg Config) (*Sender, *Receiver, error) {
	type res struct {
		r   *Receiver
		err error
	}
	ch := make(chan res, 1)
	go func() {
		r, err := NewReceiver(ctx, b, receiverCfg)
		ch <- res{r, err}
	}()
	s, serr := NewSender(ctx, a, senderCfg)
	rr := <-ch
	if serr != nil || rr.err != nil {
		if s != nil {
			s.Close()
		}
		if rr.r != nil {
			rr.r.Close()
		}
		if serr == nil {
			serr = rr.err
		}
		return nil, nil, serr
	}
	return s, rr.r, nil
}
