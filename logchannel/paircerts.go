package logchannel

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"
)

// PairCredentials are a pair's PEM files: its CA certificate and each
// end's certificate and key. The CA's key signs the two certificates and
// is then dropped: nothing else can ever be issued for the pair, and a new
// pair of certificates means a new CA (run 'ftctl pair certs' again).
type PairCredentials struct {
	Pair            string
	CA              []byte
	Primary, Backup EndCredentials
}

// EndCredentials are one end's certificate and private key, PEM-encoded.
type EndCredentials struct {
	Cert, Key []byte
}

var pairNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidPairName reports whether name can name a pair: letters, digits,
// '.', '_' and '-', at most 63 characters, starting with a letter or digit.
func ValidPairName(name string) bool { return pairNameRE.MatchString(name) }

// clockSkew backdates certificates so that a host whose clock is a little
// behind the one that created them still accepts them.
const clockSkew = time.Hour

// NewPairCredentials creates a pair's CA and the primary's and backup's
// certificates (ECDSA P-256), valid for validity from now. Each end's
// certificate names the pair and its role (a URI SAN
// ftvm-logchannel:PAIR/primary or .../backup) and carries the key usage of
// its side of TLS (client for the primary, server for the backup).
func NewPairCredentials(pair string, validity time.Duration) (*PairCredentials, error) {
	if !ValidPairName(pair) {
		return nil, fmt.Errorf("pair name %q: want letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit)", pair)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("pair %s: validity %v is not positive", pair, validity)
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pair %s: CA key: %w", pair, err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "ftvm log channel CA of pair " + pair},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := createCert(caTmpl, caTmpl, caKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("pair %s: CA certificate: %w", pair, err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("pair %s: CA certificate: %w", pair, err)
	}
	pc := &PairCredentials{Pair: pair, CA: pemBlock("CERTIFICATE", caDER)}
	for _, end := range []struct {
		role Role
		out  *EndCredentials
	}{{RoleSender, &pc.Primary}, {RoleReceiver, &pc.Backup}} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("pair %s: %s key: %w", pair, roleName(end.role), err)
		}
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: "ftvm log channel " + roleName(end.role) + " of pair " + pair},
			NotBefore:   now.Add(-clockSkew),
			NotAfter:    now.Add(validity),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{roleKeyUsage(end.role)},
			URIs:        []*url.URL{identityURI(pair, end.role)},
		}
		der, err := createCert(tmpl, ca, key, caKey)
		if err != nil {
			return nil, fmt.Errorf("pair %s: %s certificate: %w", pair, roleName(end.role), err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("pair %s: %s key: %w", pair, roleName(end.role), err)
		}
		*end.out = EndCredentials{Cert: pemBlock("CERTIFICATE", der), Key: pemBlock("PRIVATE KEY", keyDER)}
	}
	return pc, nil
}

func createCert(tmpl, parent *x509.Certificate, key, signer *ecdsa.PrivateKey) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	return x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// Auth is the credentials of the pair's end with role.
func (pc *PairCredentials) Auth(role Role) (*Auth, error) {
	end := pc.Primary
	if role == RoleReceiver {
		end = pc.Backup
	}
	return ParseAuth(pc.CA, end.Cert, end.Key)
}

// Directories of WritePairCredentials, one per end.
const (
	PrimaryDir = "primary"
	BackupDir  = "backup"
)

// WritePairCredentials writes dir/primary and dir/backup, each holding
// ca.pem, cert.pem and key.pem (keys 0600, directories 0700), ready for
// LoadAuth on the end's host. It refuses to touch either directory if it
// exists, and removes what it wrote if it fails.
func WritePairCredentials(dir string, pc *PairCredentials) (err error) {
	ends := []struct {
		dir string
		end EndCredentials
	}{{filepath.Join(dir, PrimaryDir), pc.Primary}, {filepath.Join(dir, BackupDir), pc.Backup}}
	for _, e := range ends {
		if _, err := os.Lstat(e.dir); err == nil {
			return fmt.Errorf("write pair credentials: %s exists; refusing to overwrite it (remove it, or choose another directory)", e.dir)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("write pair credentials: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write pair credentials: %w", err)
	}
	var made []string
	defer func() {
		if err != nil {
			for _, d := range made {
				os.RemoveAll(d)
			}
		}
	}()
	for _, e := range ends {
		// Mkdir, not MkdirAll: it fails if the directory appeared since the
		// check above, so nothing of someone else's is ever overwritten or
		// removed.
		if err := os.Mkdir(e.dir, 0o700); err != nil {
			return fmt.Errorf("write pair credentials: %w", err)
		}
		made = append(made, e.dir)
		for _, f := range []struct {
			name string
			data []byte
			perm fs.FileMode
		}{{CAFile, pc.CA, 0o644}, {CertFile, e.end.Cert, 0o644}, {KeyFile, e.end.Key, 0o600}} {
			if err := writeNew(filepath.Join(e.dir, f.name), f.data, f.perm); err != nil {
				return fmt.Errorf("write pair credentials: %w", err)
			}
		}
	}
	return nil
}

// writeNew creates path (failing if it exists) with data and perm.
func writeNew(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
