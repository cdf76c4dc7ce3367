package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCertPoll is how often [CertFiles.Watch] looks at the certificate
// and key files for a change.
const DefaultCertPoll = 2 * time.Second

// CertFiles is a TLS certificate and its private key kept in two PEM files,
// served through [CertFiles.GetCertificate] and reloaded when the files
// change ([CertFiles.Watch]) or on demand ([CertFiles.Reload]).
//
// A reload swaps the certificate that new handshakes get; connections
// already open keep their session. A reload that fails (a file missing or
// unparsable, or a key that does not match the certificate, as while one
// of the pair has been replaced and the other not yet) keeps the
// certificate in use, and Watch logs the error once and tries again when
// either file changes again.
type CertFiles struct {
	certFile, keyFile string
	log               *slog.Logger

	cur atomic.Pointer[tls.Certificate]

	mu   sync.Mutex // serialises reloads; guards seen
	seen [2]os.FileInfo
}

// LoadCertFiles loads the certificate chain in certFile and the private key
// in keyFile (PEM). log receives Watch's reports; nil discards them.
func LoadCertFiles(certFile, keyFile string, log *slog.Logger) (*CertFiles, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &CertFiles{certFile: certFile, keyFile: keyFile, log: log}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// GetCertificate returns the certificate in use; it is the
// tls.Config.GetCertificate hook.
func (c *CertFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load(), nil
}

// Certificate returns the certificate in use.
func (c *CertFiles) Certificate() *tls.Certificate { return c.cur.Load() }

// Reload reads both files again and, when they hold a valid pair, makes it
// the certificate new handshakes get. On error the certificate in use stays.
func (c *CertFiles) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reloadLocked()
}

func (c *CertFiles) reloadLocked() error {
	// Stat before reading: a change made while reading is seen next time.
	c.seen = c.stat()
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s and key %s: %w", c.certFile, c.keyFile, err)
	}
	c.cur.Store(&cert)
	return nil
}

// stat returns the files' current state; a file that cannot be read is nil.
func (c *CertFiles) stat() [2]os.FileInfo {
	var st [2]os.FileInfo
	for i, name := range []string{c.certFile, c.keyFile} {
		st[i], _ = os.Stat(name)
	}
	return st
}

// changed reports whether either file differs from when it was last read:
// another file (renamed over it), another size or another modification time.
func (c *CertFiles) changedLocked() bool {
	now := c.stat()
	for i := range now {
		a, b := c.seen[i], now[i]
		if (a == nil) != (b == nil) {
			return true
		}
		if a != nil && (!os.SameFile(a, b) || a.Size() != b.Size() || !a.ModTime().Equal(b.ModTime())) {
			return true
		}
	}
	return false
}

// ReloadIfChanged reloads the files when either changed since they were
// last read, and reports whether it did; see [CertFiles.Reload] for errors.
func (c *CertFiles) ReloadIfChanged() (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.changedLocked() {
		return false, nil
	}
	return true, c.reloadLocked()
}

// Watch polls the files every interval (DefaultCertPoll when 0) until ctx
// is done, reloading them when they change and logging the outcome.
func (c *CertFiles) Watch(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = DefaultCertPoll
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		reloaded, err := c.ReloadIfChanged()
		c.logReload(reloaded, err)
	}
}

// logReload reports a reload's outcome.
func (c *CertFiles) logReload(reloaded bool, err error) {
	switch {
	case err != nil:
		c.log.Error("TLS certificate not reloaded; still serving the previous one", "err", err)
	case reloaded:
		c.log.Info("TLS certificate reloaded", "cert", c.certFile, "sha256", CertFingerprint(c.Certificate()))
	}
}

// ReloadAndLog is [CertFiles.Reload], logging the outcome as Watch does:
// for a signal handler.
func (c *CertFiles) ReloadAndLog() {
	c.logReload(true, c.Reload())
}

// CertFingerprint is the SHA-256 of cert's leaf, in hex with colons, as
// browsers and `openssl x509 -fingerprint -sha256` show it.
func CertFingerprint(cert *tls.Certificate) string {
	if cert == nil || len(cert.Certificate) == 0 {
		return ""
	}
	sum := sha256.Sum256(cert.Certificate[0])
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	out := make([]byte, 0, len(h)*3/2)
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			out = append(out, ':')
		}
		out = append(out, h[i], h[i+1])
	}
	return string(out)
}

// serverTLSConfig returns a copy of cfg fit to serve with: at least TLS 1.2,
// and a certificate source.
func serverTLSConfig(cfg *tls.Config) (*tls.Config, error) {
	c := cfg.Clone()
	if c.MinVersion == 0 {
		c.MinVersion = tls.VersionTLS12
	}
	if c.MinVersion < tls.VersionTLS12 {
		return nil, errors.New("server: TLS MinVersion is below TLS 1.2")
	}
	if len(c.Certificates) == 0 && c.GetCertificate == nil && c.GetConfigForClient == nil {
		return nil, errors.New("server: TLS has no certificate (Certificates, GetCertificate or GetConfigForClient)")
	}
	return c, nil
}
