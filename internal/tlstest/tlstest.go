// Package tlstest issues throw-away certificates for tests: a CA, server certificates valid for
// 127.0.0.1, ::1 and localhost, and client certificates, written as PEM files to a test's
// temporary directory.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Authority is a test certificate authority.
type Authority struct {
	// Dir holds every PEM file the authority writes.
	Dir string
	// CAFile is the CA certificate, PEM.
	CAFile string
	// Pool trusts the CA.
	Pool *x509.CertPool

	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	serial int64
}

// KeyPair is an issued certificate with its key, as files and loaded.
type KeyPair struct {
	CertFile, KeyFile string
	Cert              tls.Certificate
}

// New creates a CA named name whose files go to a new temporary directory of t.
func New(t testing.TB, name string) *Authority {
	t.Helper()
	a := &Authority{Dir: t.TempDir(), serial: 1}
	a.key = newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(a.serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &a.key.PublicKey, a.key)
	if err != nil {
		t.Fatalf("tlstest: create CA: %v", err)
	}
	if a.cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatalf("tlstest: parse CA: %v", err)
	}
	a.CAFile = filepath.Join(a.Dir, "ca.pem")
	writePEM(t, a.CAFile, "CERTIFICATE", der)
	a.Pool = x509.NewCertPool()
	a.Pool.AddCert(a.cert)
	return a
}

// Server issues a certificate for 127.0.0.1, ::1 and localhost, usable by a server and, as
// etcd's own gateway does, as a client of itself.
func (a *Authority) Server(t testing.TB, name string) KeyPair {
	t.Helper()
	return a.issue(t, name, &x509.Certificate{
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
}

// Client issues a client certificate with common name cn (etcd takes it as the user name
// when a request carries no password).
func (a *Authority) Client(t testing.TB, cn string) KeyPair {
	t.Helper()
	return a.issue(t, cn, &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

func (a *Authority) issue(t testing.TB, cn string, tmpl *x509.Certificate) KeyPair {
	t.Helper()
	a.serial++
	key := newKey(t)
	tmpl.SerialNumber = big.NewInt(a.serial)
	tmpl.Subject = pkix.Name{CommonName: cn}
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		t.Fatalf("tlstest: issue %s: %v", cn, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("tlstest: encode key of %s: %v", cn, err)
	}
	kp := KeyPair{
		CertFile: filepath.Join(a.Dir, cn+".pem"),
		KeyFile:  filepath.Join(a.Dir, cn+"-key.pem"),
	}
	writePEM(t, kp.CertFile, "CERTIFICATE", der)
	writePEM(t, kp.KeyFile, "EC PRIVATE KEY", keyDER)
	if kp.Cert, err = tls.LoadX509KeyPair(kp.CertFile, kp.KeyFile); err != nil {
		t.Fatalf("tlstest: load %s: %v", cn, err)
	}
	return kp
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("tlstest: generate key: %v", err)
	}
	return k
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("tlstest: write %s: %v", path, err)
	}
}
