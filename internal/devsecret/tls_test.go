package devsecret

import (
	"crypto/tls"
	"os"
	"testing"
	"time"
)

// TestLoadOrCreateCert checks that the development certificate is made
// once, reused, and replaced when it nears its expiry, and that a pair
// that does not load is an error rather than silently replaced.
func TestLoadOrCreateCert(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Now()
	certFile, keyFile, created, err := LoadOrCreateCert(dir, now)
	if err != nil || !created {
		t.Fatalf("first start: created %v, %v", created, err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := pair.Leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	if err := pair.Leaf.VerifyHostname("localhost"); err != nil {
		t.Error(err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	if _, _, created, err := LoadOrCreateCert(dir, now.Add(time.Hour)); err != nil || created {
		t.Fatalf("restart: created %v, %v; want the same certificate", created, err)
	}
	if _, _, created, err := LoadOrCreateCert(dir, now.Add(certLifetime-certRenewBefore)); err != nil || !created {
		t.Fatalf("a week before expiry: created %v, %v; want a new certificate", created, err)
	}
	if err := os.WriteFile(certFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := LoadOrCreateCert(dir, now); err == nil {
		t.Fatal("a certificate file that does not load was replaced without a word")
	}
}
