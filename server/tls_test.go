package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/store/pebble"
)

// selfSigned returns a self-signed certificate for 127.0.0.1 with serial,
// and its key, in PEM.
func selfSigned(t *testing.T, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func serialOf(t *testing.T, c *tls.Certificate) int64 {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Int64()
}

// TestCertFilesReload checks that a changed pair is loaded, and that a
// half-replaced pair, a file that does not parse and a missing file each
// keep the certificate in use and report an error.
func TestCertFilesReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	c1, k1 := selfSigned(t, 1)
	writeFile(t, certFile, c1)
	writeFile(t, keyFile, k1)
	cf, err := LoadCertFiles(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := serialOf(t, cf.Certificate()), int64(1); got != want {
		t.Fatalf("serial %d, want %d", got, want)
	}
	if reloaded, err := cf.ReloadIfChanged(); reloaded || err != nil {
		t.Fatalf("unchanged files: reloaded %v, %v", reloaded, err)
	}

	c2, k2 := selfSigned(t, 2)
	writeFile(t, certFile, c2) // the key is still the old one
	reloaded, err := cf.ReloadIfChanged()
	if !reloaded || err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("half-replaced pair: reloaded %v, %v; want a mismatch error", reloaded, err)
	}
	if got := serialOf(t, cf.Certificate()); got != 1 {
		t.Fatalf("after a mismatched pair, serial %d, want 1 still", got)
	}
	if reloaded, err := cf.ReloadIfChanged(); reloaded || err != nil {
		t.Fatalf("a failed pair is tried again only when a file changes: reloaded %v, %v", reloaded, err)
	}
	writeFile(t, keyFile, k2)
	if reloaded, err := cf.ReloadIfChanged(); !reloaded || err != nil {
		t.Fatalf("completed pair: reloaded %v, %v", reloaded, err)
	}
	if got := serialOf(t, cf.Certificate()); got != 2 {
		t.Fatalf("serial %d, want 2", got)
	}

	writeFile(t, certFile, []byte("garbage"))
	if _, err := cf.ReloadIfChanged(); err == nil {
		t.Fatal("a certificate file that does not parse was accepted")
	}
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	if err := cf.Reload(); err == nil {
		t.Fatal("a missing key file was accepted")
	}
	got, err := cf.GetCertificate(nil)
	if err != nil || serialOf(t, got) != 2 {
		t.Fatalf("after bad reloads GetCertificate = %v, %v; want serial 2", got, err)
	}
}

// TestServerTLSConfig checks the TLS versions and certificate sources New
// accepts.
func TestServerTLSConfig(t *testing.T) {
	t.Parallel()
	get := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }
	c, err := serverTLSConfig(&tls.Config{GetCertificate: get})
	if err != nil || c.MinVersion != tls.VersionTLS12 {
		t.Fatalf("zero MinVersion: %v, %v; want TLS 1.2", c, err)
	}
	if _, err := serverTLSConfig(&tls.Config{GetCertificate: get, MinVersion: tls.VersionTLS11}); err == nil {
		t.Fatal("MinVersion TLS 1.1 was accepted")
	}
	if _, err := serverTLSConfig(&tls.Config{}); err == nil {
		t.Fatal("a TLS config without a certificate was accepted")
	}
}

// TestServeTLSConnectionCap checks that the connection cap works under TLS:
// a connection that never starts its handshake does not keep its slot from
// a client that needs it, and a kept-alive HTTPS connection counts as idle,
// so a new client gets its slot at once rather than after the wait.
func TestServeTLSConnectionCap(t *testing.T) {
	t.Parallel()
	certPEM, keyPEM := selfSigned(t, 1)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	st, err := pebble.Open(t.TempDir(), pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	v, err := auth.NewHS256(testSecret, auth.HS256Options{})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := auth.NewKeySet([]string{testKey})
	if err != nil {
		t.Fatal(err)
	}
	const wait = 3 * time.Second
	s, err := New(Config{Store: st, Verifier: v, BackendKeys: keys, MaxConnections: 1, ConnectionWait: wait,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	newClient := func() *http.Client {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	url := "https://" + ln.Addr().String() + "/healthz"
	get := func(hc *http.Client) time.Duration {
		t.Helper()
		start := time.Now()
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			t.Fatalf("GET /healthz: %s over %s, want 200 over HTTP/2", resp.Status, resp.Proto)
		}
		return time.Since(start)
	}

	// A silent TCP connection takes the only slot; a client's request
	// still succeeds once it has waited a whole wait.
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	get(newClient())
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("the silent connection was not closed")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the silent connection kept its slot")
	}

	// The first client's connection is now idle; a second client's
	// request closes it and is answered well within the wait.
	if took := get(newClient()); took > wait/2 {
		t.Fatalf("a new HTTPS client waited %v for an idle connection's slot; want it at once", took)
	}
}
