package logchannel

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustPair(t testing.TB, name string) *PairCredentials {
	t.Helper()
	pc, err := NewPairCredentials(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return pc
}

func mustAuth(t testing.TB, pc *PairCredentials, role Role) *Auth {
	t.Helper()
	a, err := pc.Auth(role)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func authCfg(a *Auth) Config {
	c := testCfg()
	c.Auth = a
	return c
}

// checkTLS checks that conn is TLS 1.3 with a peer of the other role of
// a's pair when a is set, and plain when it is not.
func checkTLS(conn net.Conn, a *Auth) error {
	tc, isTLS := conn.(*tls.Conn)
	if a == nil {
		if isTLS {
			return errors.New("TLS without credentials")
		}
		return nil
	}
	if !isTLS {
		return fmt.Errorf("credentials given, but the conn is a plain %T", conn)
	}
	cs := tc.ConnectionState()
	if cs.Version != tls.VersionTLS13 || len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("TLS version %#x, %d peer certificates", cs.Version, len(cs.PeerCertificates))
	}
	pair, role, err := certIdentity(cs.PeerCertificates[0])
	if err != nil || pair != a.Pair || role != peerRole(a.Role) {
		return fmt.Errorf("peer certificate is %q %v (%v), want %q %v", pair, role, err, a.Pair, peerRole(a.Role))
	}
	return nil
}

func TestRoundTripTLS(t *testing.T) {
	pc := mustPair(t, "rt")
	roundTrip(t, "tcp", "127.0.0.1:0", authCfg(mustAuth(t, pc, RoleReceiver)), authCfg(mustAuth(t, pc, RoleSender)))
}

// TestPipeTLS: credentials work on any conn, not only Dial/Listen's.
func TestPipeTLS(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	pc := mustPair(t, "pipe")
	s, r, err := Pipe(ctx, authCfg(mustAuth(t, pc, RoleSender)), authCfg(mustAuth(t, pc, RoleReceiver)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer s.Close()
	if err := checkTLS(s.l.conn, mustAuth(t, pc, RoleSender)); err != nil {
		t.Fatal(err)
	}
	seq, err := s.Append(ctx, entryFor(1))
	if err != nil {
		t.Fatal(err)
	}
	s.Flush()
	if got, e, err := r.Next(ctx); err != nil || got != seq || checkEntry(got, e) != nil {
		t.Fatalf("Next = %d %x %v", got, e, err)
	}
	if err := s.WaitAcked(ctx, seq); err != nil {
		t.Fatal(err)
	}
}

func TestTCPNeedsCredentials(t *testing.T) {
	ctx := ctxT(t)
	_, err := Listen(ctx, "tcp", "127.0.0.1:0", testCfg())
	if !errors.Is(err, ErrNoAuth) || !strings.Contains(err.Error(), "Config.Auth") || !strings.Contains(err.Error(), "ftctl pair certs") {
		t.Fatalf("Listen tcp without credentials: %v", err)
	}
	// Refused before any connection is attempted: nothing listens here.
	_, err = Dial(ctx, "tcp", "127.0.0.1:1", testCfg())
	if !errors.Is(err, ErrNoAuth) || !strings.Contains(err.Error(), "Config.Auth") {
		t.Fatalf("Dial tcp without credentials: %v", err)
	}
	ln, err := Listen(ctx, "unix", filepath.Join(t.TempDir(), "s"), testCfg())
	if err != nil {
		t.Fatalf("unix without credentials: %v", err)
	}
	ln.Close()
}

// TestCredentialsOfTheOtherRole: an end given the other end's directory
// says so before touching the network.
func TestCredentialsOfTheOtherRole(t *testing.T) {
	ctx := ctxT(t)
	pc := mustPair(t, "p")
	_, err := Dial(ctx, "tcp", "127.0.0.1:1", authCfg(mustAuth(t, pc, RoleReceiver)))
	if err == nil || !strings.Contains(err.Error(), `holds the backup's certificate of pair "p"; a primary needs its own`) {
		t.Fatalf("Dial with the backup's credentials: %v", err)
	}
	_, err = Listen(ctx, "tcp", "127.0.0.1:0", authCfg(mustAuth(t, pc, RoleSender)))
	if err == nil || !strings.Contains(err.Error(), `holds the primary's certificate of pair "p"; a backup needs its own`) {
		t.Fatalf("Listen with the primary's credentials: %v", err)
	}
}

// logBuf collects a logger's output for a test to read.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// refusal listens on loopback TCP with bcfg, runs client against it, and
// returns the client's error and what the backup logged about the peer
// it refused. Accept must not return that peer; it keeps waiting.
func refusal(t *testing.T, bcfg Config, client func(ctx context.Context, addr string) error) (error, string) {
	t.Helper()
	noLeaks(t)
	ctx := ctxT(t)
	var logs logBuf
	bcfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	ln, err := Listen(ctx, "tcp", "127.0.0.1:0", bcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	accepted := make(chan error, 1)
	go func() {
		r, err := ln.Accept(actx)
		if r != nil {
			r.Close()
			err = errors.New("Accept returned a Receiver for a refused peer")
		}
		accepted <- err
	}()
	cerr := client(ctx, ln.Addr().String())
	if cerr == nil {
		t.Fatal("the client was not refused")
	}
	waitFor(t, "the backup's refusal in its log", func() bool { return strings.Contains(logs.String(), "refused a peer") })
	cancel()
	if err := <-accepted; !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept after a refused peer = %v, want it still waiting until cancelled", err)
	}
	line := logs.String()
	t.Logf("primary: %v", cerr)
	t.Logf("backup:  %s", line)
	return cerr, line
}

// rawTLSPrimary is a primary that speaks TLS with a certificate of the
// test's choosing (or none) and trusts any backup, so that only the
// backup's checks are in play.
func rawTLSPrimary(cert *EndCredentials) func(ctx context.Context, addr string) error {
	return func(ctx context.Context, addr string) error {
		conn, err := new(net.Dialer).DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		tcfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
		if cert != nil {
			c, err := tls.X509KeyPair(cert.Cert, cert.Key)
			if err != nil {
				return err
			}
			tcfg.Certificates = []tls.Certificate{c}
		}
		s, err := NewSender(ctx, tls.Client(conn, tcfg), testCfg())
		if s != nil {
			s.Close()
		}
		return err
	}
}

func dialWith(cfg Config) func(ctx context.Context, addr string) error {
	return func(ctx context.Context, addr string) error {
		s, err := Dial(ctx, "tcp", addr, cfg)
		if s != nil {
			s.Close()
		}
		return err
	}
}

// TestRefusedPeers: each way of failing authentication ends with ErrAuth
// (or, for a plain primary, a handshake error saying what to give it) on
// the primary, and a logged refusal on the backup, which keeps waiting.
func TestRefusedPeers(t *testing.T) {
	pair := mustPair(t, "a")
	other := mustPair(t, "a") // same name, another CA
	backup := authCfg(mustAuth(t, pair, RoleReceiver))
	for _, tc := range []struct {
		name           string
		bcfg           Config
		client         func(ctx context.Context, addr string) error
		primary, notes string // in the primary's error, in the backup's log
		primaryAuthErr bool
	}{{
		name:   "no certificate",
		bcfg:   backup,
		client: rawTLSPrimary(nil), primaryAuthErr: true,
		primary: "refused this end's credentials: remote error: tls: certificate required",
		notes:   "not authenticated: tls: client didn't provide a certificate",
	}, {
		name:   "certificate of another CA",
		bcfg:   backup,
		client: rawTLSPrimary(&other.Primary), primaryAuthErr: true,
		primary: "refused this end's credentials: remote error: tls: bad certificate",
		notes:   "is not valid for this pair's CA: x509: certificate signed by unknown authority",
	}, {
		name:   "credentials of another pair",
		bcfg:   backup,
		client: dialWith(authCfg(mustAuth(t, other, RoleSender))), primaryAuthErr: true,
		primary: "not authenticated: certificate \\\"ftvm log channel backup of pair a\\\" is not valid for this pair's CA",
		notes:   "refused this end's credentials: remote error: tls: bad certificate",
	}, {
		name:   "backup certificate used as primary",
		bcfg:   backup,
		client: rawTLSPrimary(&pair.Backup), primaryAuthErr: true,
		primary: "refused this end's credentials: remote error: tls: bad certificate",
		notes:   "certificate is the backup's of pair \\\"a\\\"; a backup accepts only the primary's",
	}, {
		name:    "plain primary, TLS backup",
		bcfg:    backup,
		client:  dialWith(plainTCPCfg()),
		primary: "if the peer requires authentication, give this end the pair's credentials",
		notes:   "not authenticated: tls: first record does not look like a TLS handshake (the peer does not speak TLS",
	}, {
		name:   "TLS primary, plain backup",
		bcfg:   plainTCPCfg(),
		client: dialWith(authCfg(mustAuth(t, pair, RoleSender))), primaryAuthErr: true,
		primary: "not authenticated: tls: first record does not look like a TLS handshake (the peer does not speak TLS",
		notes:   "not authenticated: the peer speaks TLS and this end has no credentials",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cerr, notes := refusal(t, tc.bcfg, tc.client)
			if errors.Is(cerr, ErrAuth) != tc.primaryAuthErr {
				t.Errorf("primary's error wraps ErrAuth: %v, want %v", errors.Is(cerr, ErrAuth), tc.primaryAuthErr)
			}
			if !tc.primaryAuthErr && !errors.Is(cerr, ErrHandshake) {
				t.Errorf("primary's error %v, want ErrHandshake", cerr)
			}
			// The log's text handler quotes the error: match it as quoted.
			if !strings.Contains(strings.ReplaceAll(cerr.Error(), `"`, `\"`), tc.primary) {
				t.Errorf("primary's error:\n  %v\nwant it to contain %q", cerr, tc.primary)
			}
			if !strings.Contains(notes, tc.notes) || !strings.Contains(notes, "receiver(backup): peer 127.0.0.1:") {
				t.Errorf("backup's log:\n  %s\nwant it to name the peer and contain %q", notes, tc.notes)
			}
		})
	}
}

// TestPrimaryRefusesAPrimaryAsBackup: the primary checks the backup's
// role too, so a stolen primary certificate cannot collect its entries.
func TestPrimaryRefusesAPrimaryAsBackup(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	pair := mustPair(t, "a")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		c, err := tls.X509KeyPair(pair.Primary.Cert, pair.Primary.Key)
		if err != nil {
			served <- err
			return
		}
		served <- tls.Server(conn, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{c}, ClientAuth: tls.RequireAnyClientCert}).HandshakeContext(ctx)
	}()
	err = dialWith(authCfg(mustAuth(t, pair, RoleSender)))(ctx, ln.Addr().String())
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), `not authenticated: certificate is the primary's of pair "a"; a primary accepts only the backup's`) {
		t.Fatalf("Dial to a backup with a primary's certificate: %v", err)
	}
	if serr := <-served; serr == nil || !strings.Contains(serr.Error(), "bad certificate") {
		t.Fatalf("the fake backup's handshake: %v, want the primary's refusal", serr)
	}
}

// silentBackup listens with pair's backup credentials and the given
// handshake timeout, logging into logs, and connects n peers that never
// say anything.
func silentBackup(t *testing.T, pair *PairCredentials, timeout time.Duration, n int, logs *logBuf) *Listener {
	t.Helper()
	bcfg := authCfg(mustAuth(t, pair, RoleReceiver))
	bcfg.HandshakeTimeout = timeout
	bcfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ln, err := Listen(ctxT(t), "tcp", "127.0.0.1:0", bcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	for range n {
		silent, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { silent.Close() })
	}
	return ln
}

// TestAcceptDropsASilentPeer: a TCP peer that connects and says nothing
// is dropped when the handshake timeout expires.
func TestAcceptDropsASilentPeer(t *testing.T) {
	noLeaks(t)
	var logs logBuf
	ln := silentBackup(t, mustPair(t, "a"), 100*time.Millisecond, 1, &logs)
	ctx, cancel := context.WithCancel(ctxT(t))
	accepted := make(chan error, 1)
	go func() {
		_, err := ln.Accept(ctx)
		accepted <- err
	}()
	waitFor(t, "the silent peer dropped", func() bool { return strings.Contains(logs.String(), "no TLS handshake from the peer in time") })
	cancel()
	if err := <-accepted; !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept = %v, want it waiting for the primary until cancelled", err)
	}
}

// TestSilentPeersDoNotDelayThePrimary: with a handshake timeout far
// beyond the test's deadline, silent peers queued before the primary
// must not hold it up: Accept handshakes side by side.
func TestSilentPeersDoNotDelayThePrimary(t *testing.T) {
	noLeaks(t)
	ctx := ctxT(t)
	pair := mustPair(t, "a")
	var logs logBuf
	ln := silentBackup(t, pair, 10*time.Minute, 3, &logs)
	sent := make(chan error, 1)
	go func() {
		s, err := Dial(ctx, "tcp", ln.Addr().String(), authCfg(mustAuth(t, pair, RoleSender)))
		if err == nil {
			<-s.Done()
			s.Close()
		}
		sent <- err
	}()
	r, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkTLS(r.l.conn, mustAuth(t, pair, RoleReceiver)); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

func TestPairCredentialsCertificates(t *testing.T) {
	pc := mustPair(t, "kv-1")
	for _, tc := range []struct {
		end  EndCredentials
		role Role
	}{{pc.Primary, RoleSender}, {pc.Backup, RoleReceiver}} {
		a, err := ParseAuth(pc.CA, tc.end.Cert, tc.end.Key)
		if err != nil {
			t.Fatal(err)
		}
		if a.Pair != "kv-1" || a.Role != tc.role {
			t.Errorf("certificate says pair %q role %v, want kv-1 %v", a.Pair, a.Role, tc.role)
		}
		leaf := a.cert.Leaf
		pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%v: public key %T, want ECDSA P-256", tc.role, leaf.PublicKey)
		}
		if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != roleKeyUsage(tc.role) || leaf.IsCA {
			t.Errorf("%v: key usage %v, CA %v", tc.role, leaf.ExtKeyUsage, leaf.IsCA)
		}
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life < time.Hour || life > time.Hour+clockSkew+time.Minute {
			t.Errorf("%v: valid %v..%v for a validity of an hour", tc.role, leaf.NotBefore, leaf.NotAfter)
		}
	}
	block, _ := pem.Decode(pc.CA)
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !ca.IsCA || !ca.MaxPathLenZero {
		t.Fatalf("CA certificate: %v, IsCA %v", err, ca != nil && ca.IsCA)
	}
	// A certificate with another pair's CA does not load.
	if _, err := ParseAuth(mustPair(t, "kv-1").CA, pc.Primary.Cert, pc.Primary.Key); err == nil || !strings.Contains(err.Error(), "not valid for this pair's CA") {
		t.Fatalf("ParseAuth with another CA: %v", err)
	}
	for _, name := range []string{"", "-a", "a/b", "a b", strings.Repeat("x", 64)} {
		if _, err := NewPairCredentials(name, time.Hour); err == nil {
			t.Errorf("pair name %q accepted", name)
		}
	}
}

func TestWritePairCredentials(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pair")
	pc := mustPair(t, "w")
	if err := WritePairCredentials(dir, pc); err != nil {
		t.Fatal(err)
	}
	for _, end := range []struct {
		dir  string
		role Role
		cred EndCredentials
	}{{PrimaryDir, RoleSender, pc.Primary}, {BackupDir, RoleReceiver, pc.Backup}} {
		d := filepath.Join(dir, end.dir)
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v mode %v, want 0700", d, err, st.Mode())
		}
		for name, want := range map[string][]byte{CAFile: pc.CA, CertFile: end.cred.Cert, KeyFile: end.cred.Key} {
			p := filepath.Join(d, name)
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s: %v, contents differ from the credentials", p, err)
			}
			st, _ := os.Stat(p)
			if name == KeyFile && st.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, want 0600", p, st.Mode())
			}
			if st.Mode().Perm()&0o022 != 0 {
				t.Errorf("%s: mode %v writable by others", p, st.Mode())
			}
		}
		a, err := LoadAuth(d)
		if err != nil || a.Pair != "w" || a.Role != end.role {
			t.Errorf("LoadAuth(%s) = %+v, %v", d, a, err)
		}
	}

	// A second run refuses and leaves the first run's files alone.
	err := WritePairCredentials(dir, mustPair(t, "w"))
	if err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second write: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, BackupDir, KeyFile)); !bytes.Equal(got, pc.Backup.Key) {
		t.Fatal("second write changed the backup's key")
	}
	// Only one of the two directories existing is refused too, and the
	// other is not created.
	dir2 := filepath.Join(t.TempDir(), "pair")
	if err := os.MkdirAll(filepath.Join(dir2, BackupDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WritePairCredentials(dir2, pc); err == nil {
		t.Fatal("write over an existing backup directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir2, PrimaryDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("primary directory after a refused write: %v", err)
	}

	// A key others may read is refused on load.
	key := filepath.Join(dir, PrimaryDir, KeyFile)
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAuth(filepath.Join(dir, PrimaryDir)); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("LoadAuth with a 0644 key: %v", err)
	}
}
