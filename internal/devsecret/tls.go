package devsecret

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names of the development TLS certificate and its key in the data
// directory. The certificate is self-signed: it is also the file clients
// trust it by (--ca-file, curl --cacert).
const (
	CertFileName = "dev-tls.crt"
	KeyFileName  = "dev-tls.key"
)

// certLifetime is how long a development certificate is valid; one with
// less than certRenewBefore left is replaced at start.
const (
	certLifetime    = 365 * 24 * time.Hour
	certRenewBefore = 7 * 24 * time.Hour
)

// LoadOrCreateCert returns the paths of the self-signed development
// certificate for localhost, 127.0.0.1 and ::1 and its key (mode 0600) kept
// in dataDir, generating them when either file is missing or the
// certificate expires within a week. A pair that is there but does not load
// is an error that says how to start afresh. created says whether they are
// new.
func LoadOrCreateCert(dataDir string, now time.Time) (certFile, keyFile string, created bool, err error) {
	certFile, keyFile = filepath.Join(dataDir, CertFileName), filepath.Join(dataDir, KeyFileName)
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err == nil && pair.Leaf != nil && now.Add(certRenewBefore).Before(pair.Leaf.NotAfter) {
		return certFile, keyFile, false, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", "", false, fmt.Errorf("development TLS certificate: %w (delete %s and %s to have new ones generated)", err, certFile, keyFile)
	}
	certPEM, keyPEM, err := selfSigned(now)
	if err != nil {
		return "", "", false, fmt.Errorf("generate a development TLS certificate: %w", err)
	}
	// The key first: a certificate never sits beside a key it does not match
	// for longer than it takes to write the second file.
	if err := WriteFile(dataDir, KeyFileName, keyPEM); err != nil {
		return "", "", false, fmt.Errorf("keep the development TLS key: %w", err)
	}
	if err := WriteFile(dataDir, CertFileName, certPEM); err != nil {
		return "", "", false, fmt.Errorf("keep the development TLS certificate: %w", err)
	}
	return certFile, keyFile, true, nil
}

func selfSigned(now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "localhost", Organization: []string{"dalv serve --dev"}},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}
