package logchannel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Authentication errors. A failed authentication wraps ErrAuth on both
// ends; a Dial or Listen on TCP without credentials returns ErrNoAuth.
var (
	// ErrAuth: the two ends did not authenticate each other: the peer
	// presented no certificate, one not issued by this pair's CA, or one
	// for the wrong role or pair; or it refused ours; or only one end
	// speaks TLS.
	ErrAuth = errors.New("logchannel: peer not authenticated")
	// ErrNoAuth: Dial or Listen on TCP without Config.Auth.
	ErrNoAuth = errors.New("logchannel: the log channel on TCP must be authenticated")
)

// File names in a credentials directory (see LoadAuth).
const (
	CAFile   = "ca.pem"
	CertFile = "cert.pem"
	KeyFile  = "key.pem"
)

// identityScheme is the scheme of the URI SAN that names a certificate's
// pair and role: ftvm-logchannel:PAIR/primary or ftvm-logchannel:PAIR/backup.
// A scheme of our own cannot be mistaken for a host name, so a certificate
// issued for something else cannot pass as a log channel end.
const identityScheme = "ftvm-logchannel"

// Auth is one end's credentials for the log channel: the pair's CA and
// this end's certificate and key. The certificate names the pair and the
// role (see NewPairCredentials), so a backup accepts only its pair's
// primary and a primary only its pair's backup. Load it with LoadAuth or
// ParseAuth; it is immutable and may be shared.
type Auth struct {
	// Pair and Role are what this end's certificate says it is.
	Pair string
	Role Role

	ca   *x509.CertPool
	cert tls.Certificate
}

// LoadAuth reads the credentials in dir (ca.pem, cert.pem and key.pem, as
// written by WritePairCredentials). It refuses a key file that others
// may read.
func LoadAuth(dir string) (*Auth, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("logchannel: load credentials: %w", err)
		}
		return b, nil
	}
	keyPath := filepath.Join(dir, KeyFile)
	if st, err := os.Stat(keyPath); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("logchannel: load credentials: %s has mode %#o, readable by others: chmod 600 %s", keyPath, st.Mode().Perm(), keyPath)
	}
	ca, err := read(CAFile)
	if err != nil {
		return nil, err
	}
	cert, err := read(CertFile)
	if err != nil {
		return nil, err
	}
	key, err := read(KeyFile)
	if err != nil {
		return nil, err
	}
	a, err := ParseAuth(ca, cert, key)
	if err != nil {
		return nil, fmt.Errorf("logchannel: load credentials from %s: %w", dir, err)
	}
	return a, nil
}

// ParseAuth builds credentials from PEM: the pair's CA certificate, this
// end's certificate and its private key. The certificate must be issued
// by the CA, valid now, and name a pair and role.
func ParseAuth(caPEM, certPEM, keyPEM []byte) (*Auth, error) {
	ca := x509.NewCertPool()
	if !ca.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s: no PEM certificate", CAFile)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", CertFile, KeyFile, err)
	}
	a := &Auth{ca: ca, cert: cert}
	if err := a.verifyChain(cert.Leaf); err != nil {
		return nil, fmt.Errorf("%s: %w", CertFile, err)
	}
	if a.Pair, a.Role, err = certIdentity(cert.Leaf); err != nil {
		return nil, fmt.Errorf("%s: %w", CertFile, err)
	}
	return a, nil
}

// roleName is a role as certificates and the CLI spell it.
func roleName(r Role) string {
	switch r {
	case RoleSender:
		return "primary"
	case RoleReceiver:
		return "backup"
	}
	return r.String()
}

func peerRole(r Role) Role {
	if r == RoleSender {
		return RoleReceiver
	}
	return RoleSender
}

// identityURI names a pair's end in its certificate.
func identityURI(pair string, role Role) *url.URL {
	return &url.URL{Scheme: identityScheme, Opaque: pair + "/" + roleName(role)}
}

// certIdentity reads the pair and role a certificate was issued for.
func certIdentity(c *x509.Certificate) (string, Role, error) {
	for _, u := range c.URIs {
		if u.Scheme != identityScheme {
			continue
		}
		pair, role, ok := strings.Cut(u.Opaque, "/")
		switch {
		case !ok || pair == "":
		case role == "primary":
			return pair, RoleSender, nil
		case role == "backup":
			return pair, RoleReceiver, nil
		}
		return "", 0, fmt.Errorf("certificate %q: bad log channel identity %q", c.Subject.CommonName, u)
	}
	return "", 0, fmt.Errorf("certificate %q names no log channel pair and role (not made by 'ftctl pair certs'?)", c.Subject.CommonName)
}

// verifyChain checks that c was issued by this pair's CA and is valid now.
// Host names play no part: an end is identified by its pair and role.
func (a *Auth) verifyChain(c *x509.Certificate) error {
	_, err := c.Verify(x509.VerifyOptions{Roots: a.ca, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("certificate %q is not valid for this pair's CA: %w", c.Subject.CommonName, err)
	}
	return nil
}

// verifyPeer checks the peer's certificate: issued by our CA, for our
// pair, for the other role, with the key usage of that role.
func (a *Auth) verifyPeer(certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return errors.New("the peer presented no certificate")
	}
	// Only the leaf: a pair's CA signs its two ends directly.
	c := certs[0]
	if err := a.verifyChain(c); err != nil {
		return err
	}
	pair, role, err := certIdentity(c)
	if err != nil {
		return err
	}
	want := peerRole(a.Role)
	switch {
	case pair != a.Pair:
		return fmt.Errorf("certificate is for pair %q, this end belongs to pair %q", pair, a.Pair)
	case role != want:
		return fmt.Errorf("certificate is the %s's of pair %q; a %s accepts only the %s's", roleName(role), pair, roleName(a.Role), roleName(want))
	case !slices.Contains(c.ExtKeyUsage, roleKeyUsage(role)):
		return fmt.Errorf("certificate of the %s lacks the key usage of its role", roleName(role))
	}
	return nil
}

// roleKeyUsage: the primary dials (a TLS client), the backup listens.
func roleKeyUsage(r Role) x509.ExtKeyUsage {
	if r == RoleSender {
		return x509.ExtKeyUsageClientAuth
	}
	return x509.ExtKeyUsageServerAuth
}

// tlsConfig is this end's TLS configuration: TLS 1.3 only, each side
// presents its certificate and verifies the other's with verifyPeer.
func (a *Auth) tlsConfig() *tls.Config {
	c := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{a.cert},
		SessionTicketsDisabled: true,
		VerifyConnection:       func(cs tls.ConnectionState) error { return a.verifyPeer(cs.PeerCertificates) },
	}
	if a.Role == RoleReceiver {
		// The client certificate is verified by verifyPeer (which also
		// checks the role), not by crypto/tls's default chain check.
		c.ClientAuth = tls.RequireAnyClientCert
	} else {
		// The backup has no host name to check: the backup's address is
		// whatever the operator typed. verifyPeer checks the chain against
		// the pair's CA and the role instead.
		c.InsecureSkipVerify = true
	}
	return c
}

// authError is a failed authentication, said the same way on both ends.
type authError struct {
	role    Role
	peer    net.Addr
	refused bool // the peer refused our credentials (else we refused the peer's)
	err     error
}

func (e *authError) Error() string {
	if e.refused {
		return fmt.Sprintf("logchannel: %v: peer %v refused this end's credentials: %v (do both ends have the same pair's credentials, each its own role's?)", e.role, e.peer, e.err)
	}
	return fmt.Sprintf("logchannel: %v: peer %v not authenticated: %v", e.role, e.peer, e.err)
}

func (e *authError) Unwrap() error        { return e.err }
func (e *authError) Is(target error) bool { return target == ErrAuth }

// secure runs the TLS handshake on conn when cfg has credentials, and
// returns the conn to speak the log channel on.
func secure(ctx context.Context, conn net.Conn, cfg Config, role Role) (net.Conn, error) {
	a := cfg.Auth
	if a == nil {
		return conn, nil
	}
	if err := a.checkRole(role); err != nil {
		return conn, err
	}
	var tc *tls.Conn
	if role == RoleReceiver {
		tc = tls.Server(conn, a.tlsConfig())
	} else {
		tc = tls.Client(conn, a.tlsConfig())
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("no TLS handshake from the peer in time: %w", err)
		}
		return tc, tlsFailure(err)
	}
	return tc, nil
}

// tlsFailure turns an error of a TLS conn (its handshake, or the first
// read after it) into an authError, with a hint when the peer does not
// speak TLS at all.
func tlsFailure(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		// In TLS 1.3 the client's handshake completes before the server
		// checked the client's certificate, so its refusal arrives as an
		// alert on the first read.
		return &authError{refused: true, err: err}
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		err = fmt.Errorf("%w (the peer does not speak TLS: give both ends this pair's credentials)", err)
	}
	return &authError{err: err}
}

// looksLikeTLS reports whether a peer's first bytes are a TLS record (an
// alert or a handshake), where a hello was expected.
func looksLikeTLS(b []byte) bool {
	return len(b) >= 2 && (b[0] == 0x15 || b[0] == 0x16) && b[1] == 0x03
}

func (a *Auth) checkRole(role Role) error {
	if a.Role != role {
		return fmt.Errorf("this end's Config.Auth holds the %s's certificate of pair %q; a %s needs its own (the %s directory of 'ftctl pair certs')",
			roleName(a.Role), a.Pair, roleName(role), roleName(role))
	}
	return nil
}

// checkCredentials is Dial's and Listen's check before touching the
// network: TCP (anything but a unix socket) needs credentials unless
// cfg.InsecureTCP, and credentials must be for this end's role.
func checkCredentials(network string, cfg Config, role Role) error {
	switch {
	case cfg.Auth != nil:
		return cfg.Auth.checkRole(role)
	case cfg.InsecureTCP || strings.HasPrefix(network, "unix"):
		return nil
	}
	return fmt.Errorf("%w: set Config.Auth (LoadAuth of this end's directory from 'ftctl pair certs'), or use a unix socket on one host", ErrNoAuth)
}
