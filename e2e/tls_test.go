package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/client"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "dalv e2e test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// leaf issues a server certificate for 127.0.0.1 and localhost with the
// given serial, and returns it and its key in PEM.
func (ca *testCA) leaf(t *testing.T, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// writeAtomic replaces path's content at once, as a deployment tool
// (cert-manager, certbot) does: a temporary file renamed over it.
func writeAtomic(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// tlsHTTPClient is an HTTP client that trusts pool and speaks HTTP/2 over
// TLS (and HTTP/1.1 when the server offers only that), with its own
// connections.
func tlsHTTPClient(pool *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone() // keeps ForceAttemptHTTP2
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	return &http.Client{Transport: tr}
}

// peerSerial is the serial of the certificate the server presents to a new
// connection.
func peerSerial(addr string, pool *x509.CertPool) (int64, error) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), nil
}

// seenTLS records the protocol and server certificate of the answers that
// pass through it.
type seenTLS struct {
	rt     http.RoundTripper
	mu     sync.Mutex
	proto  string
	serial int64
}

func (s *seenTLS) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.rt.RoundTrip(req)
	if err == nil && resp.TLS != nil {
		s.mu.Lock()
		s.proto, s.serial = resp.Proto, resp.TLS.PeerCertificates[0].SerialNumber.Int64()
		s.mu.Unlock()
	}
	return resp, err
}

func (s *seenTLS) last() (string, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proto, s.serial
}

// startTLSServer starts dalv serve with a certificate of serial 1 from a new
// test CA, written to files in a temporary directory.
func startTLSServer(t *testing.T) (srv *proc.Server, ca *testCA, certFile, keyFile string) {
	t.Helper()
	ca = newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	c, k := ca.leaf(t, 1)
	writeAtomic(t, certFile, c)
	writeAtomic(t, keyFile, k)
	srv = startServer(t, "--tls-cert", certFile, "--tls-key", keyFile)
	if !strings.HasPrefix(srv.URL(), "https://") {
		t.Fatalf("server URL %q: want https://", srv.URL())
	}
	return srv, ca, certFile, keyFile
}

// TestTLS runs the Go SDK, a raw device watch, gRPC and curl over HTTPS
// with a private CA, then replaces the certificate on disk: new connections
// get the new one while a watch opened before the swap keeps its connection
// and still delivers a commit made after it.
func TestTLS(t *testing.T) {
	t.Parallel()
	srv, ca, certFile, keyFile := startTLSServer(t)
	pool := ca.pool()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The Go SDK syncs and watches over https://.
	r, err := client.Open(filepath.Join(t.TempDir(), "alice.replica"), client.Options{
		ServerURL:   srv.URL(),
		TokenSource: func(context.Context) (string, error) { return token(t, "alice"), nil },
		HTTPClient:  tlsHTTPClient(pool),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if err := r.Put("prefs/theme", []byte(`"dark"`)); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	backend := backendClientTLS(pool, srv, connect.WithGRPC())
	wait.ForEvery(t, 10*time.Second, 20*time.Millisecond, func() error {
		resp, err := backend.Get(ctx, connect.NewRequest(&dalvv1.GetRequest{User: "alice", Keys: []string{"prefs/theme"}}))
		if err != nil {
			return err
		}
		if len(resp.Msg.GetItems()) != 1 {
			return fmt.Errorf("the server has no prefs/theme yet: %v", resp.Msg)
		}
		return nil
	})
	wait.ForEvery(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !r.Status().Watching {
			return fmt.Errorf("the replica is not watching yet: %+v", r.Status())
		}
		return nil
	})

	// A device watch of its own, on an HTTP/2 connection opened before the swap.
	seen := &seenTLS{rt: tlsHTTPClient(pool).Transport}
	dev := dalvv1connect.NewClientServiceClient(&http.Client{Transport: seen}, srv.URL())
	wreq := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "tls-watch", FromVersion: 1})
	wreq.Header().Set("Authorization", "Bearer "+token(t, "alice"))
	stream, err := dev.Watch(ctx, wreq)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() { // the heartbeat that ends the catch-up
		t.Fatalf("watch: %v", stream.Err())
	}
	if proto, serial := seen.last(); proto != "HTTP/2.0" || serial != 1 {
		t.Fatalf("watch over %s with certificate serial %d, want HTTP/2.0 and serial 1", proto, serial)
	}

	// curl with the CA file, over HTTP/2.
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	writeAtomic(t, caFile, ca.pem)
	out, err := exec.CommandContext(ctx, "curl", "-sS", "--fail-with-body", "--http2", "--cacert", caFile,
		"-w", "\n%{http_version}", "-H", "Content-Type: application/json", "-H", "Authorization: Bearer "+testBackendKey,
		"-d", `{"user":"alice","keys":["prefs/theme"]}`, srv.URL()+"/dalv.v1.BackendService/Get").CombinedOutput()
	if err != nil {
		t.Fatalf("curl --cacert: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte(`"key":"prefs/theme"`)) || !bytes.HasSuffix(out, []byte("\n2")) {
		t.Fatalf("curl --cacert answered %s; want prefs/theme over HTTP/2", out)
	}
	// Without the CA, curl refuses the server.
	if out, err := exec.CommandContext(ctx, "curl", "-sS", srv.URL()+"/healthz").CombinedOutput(); err == nil {
		t.Fatalf("curl without --cacert trusted the test CA: %s", out)
	}

	// A replacement that does not parse keeps the certificate in use.
	writeAtomic(t, certFile, []byte("not a certificate\n"))
	wait.ForEvery(t, 15*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(srv.Stderr(), "TLS certificate not reloaded") {
			return fmt.Errorf("no reload error logged yet")
		}
		return nil
	})
	if serial, err := peerSerial(srv.Addr, pool); err != nil || serial != 1 {
		t.Fatalf("after a bad replacement a new connection got serial %d (%v), want 1", serial, err)
	}

	// A new certificate, from another CA: new connections get it.
	ca2 := newTestCA(t)
	c, k := ca2.leaf(t, 2)
	writeAtomic(t, keyFile, k)
	writeAtomic(t, certFile, c)
	both := ca.pool()
	both.AddCert(ca2.cert)
	wait.ForEvery(t, 15*time.Second, 50*time.Millisecond, func() error {
		serial, err := peerSerial(srv.Addr, both)
		if err != nil {
			return err
		}
		if serial != 2 {
			return fmt.Errorf("a new connection got serial %d, want 2", serial)
		}
		return nil
	})
	if _, err := peerSerial(srv.Addr, pool); err == nil {
		t.Fatal("after the swap, the old CA alone still verifies a new connection")
	}

	// A commit after the swap, over a new connection, reaches the watch
	// opened before it, on its old connection, and the SDK's replica.
	backend2 := backendClientTLS(ca2.pool(), srv, connect.WithGRPC())
	cresp, err := backend2.Commit(ctx, connect.NewRequest(&dalvv1.CommitRequest{User: "alice", Ops: []*dalvv1.Op{{
		Kind: dalvv1.OpKind_OP_KIND_PUT, Key: "after/swap", Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: []byte(`1`)}},
	}}}))
	if err != nil {
		t.Fatalf("commit over gRPC with the new certificate: %v", err)
	}
	for {
		if !stream.Receive() {
			t.Fatalf("the watch opened before the swap ended: %v", stream.Err())
		}
		if ev := stream.Msg(); ev.GetVersion() == cresp.Msg.GetVersion() {
			if len(ev.GetChanges()) != 1 || ev.GetChanges()[0].GetKey() != "after/swap" {
				t.Fatalf("event %v: want after/swap", ev)
			}
			break
		}
	}
	if _, serial := seen.last(); serial != 1 {
		t.Fatalf("the old watch's connection has serial %d, want 1", serial)
	}
	wait.ForEvery(t, 10*time.Second, 20*time.Millisecond, func() error {
		v, err := r.Get("after/swap")
		if err != nil {
			return err
		}
		if v == nil || string(v.GetScalar()) != "1" {
			return fmt.Errorf("the replica holds %v for after/swap", v)
		}
		return nil
	})
}

// TestTLSRefusesOldVersions checks that TLS 1.1 and plain HTTP are refused,
// that TLS 1.2 is enough, and that ALPN offers HTTP/2 and HTTP/1.1.
func TestTLSRefusesOldVersions(t *testing.T) {
	t.Parallel()
	srv, ca, _, _ := startTLSServer(t)
	if conn, err := tls.Dial("tcp", srv.Addr, &tls.Config{RootCAs: ca.pool(), MaxVersion: tls.VersionTLS11}); err == nil {
		conn.Close()
		t.Fatal("a TLS 1.1 client was accepted")
	}
	conn, err := tls.Dial("tcp", srv.Addr, &tls.Config{RootCAs: ca.pool(), MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("TLS 1.2: %v", err)
	}
	if got, want := conn.ConnectionState().NegotiatedProtocol, "h2"; got != want {
		t.Errorf("ALPN chose %q, want %q", got, want)
	}
	conn.Close()
	conn, err = tls.Dial("tcp", srv.Addr, &tls.Config{RootCAs: ca.pool(), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatalf("an HTTP/1.1 client: %v", err)
	}
	if got, want := conn.ConnectionState().NegotiatedProtocol, "http/1.1"; got != want {
		t.Errorf("ALPN chose %q for an HTTP/1.1 client, want %q", got, want)
	}
	conn.Close()
	resp, err := http.Get("http://" + srv.Addr + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP was served on the TLS port")
		}
	}
}

// TestTLSFlags checks that the certificate and key go together and that a
// bad pair stops the server at start with a message naming the files.
func TestTLSFlags(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key")
	c, _ := ca.leaf(t, 1)
	_, k := ca.leaf(t, 2)
	writeAtomic(t, certFile, c)
	writeAtomic(t, keyFile, k)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cert alone", []string{"--tls-cert", certFile}, "--tls-cert and --tls-key go together"},
		{"mismatched pair", []string{"--tls-cert", certFile, "--tls-key", keyFile}, "private key does not match public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(binary, append([]string{"serve", "--addr", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "data")}, tc.args...)...)
			cmd.Env = append(os.Environ(), testEnv()...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("serve started: %s", out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("serve said %q; want it to say %q", out, tc.want)
			}
		})
	}
}

// backendClientTLS is a backend client over HTTPS trusting pool.
func backendClientTLS(pool *x509.CertPool, srv *proc.Server, opts ...connect.ClientOption) dalvv1connect.BackendServiceClient {
	return dalvv1connect.NewBackendServiceClient(tlsHTTPClient(pool), srv.URL(), append([]connect.ClientOption{bearer(testBackendKey)}, opts...)...)
}

// TestTLSCLI runs the operator commands and dalv bench against an HTTPS
// server with a private CA: trusted through --ca-file or DALV_CA_FILE,
// refused without it.
func TestTLSCLI(t *testing.T) {
	t.Parallel()
	srv, ca, _, _ := startTLSServer(t)
	dir := t.TempDir()
	caFile, notPEM := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "not.pem")
	writeAtomic(t, caFile, ca.pem)
	writeAtomic(t, notPEM, []byte("hello\n"))
	env := cliEnv(srv)

	if got, want := cliOK(t, env, "put", "--ca-file", caFile, "tls-cli", "greeting", "hello"), "committed version 1\n"; got != want {
		t.Fatalf("put --ca-file printed %q, want %q", got, want)
	}
	if out := cliOK(t, append(env, "DALV_CA_FILE="+caFile), "get", "tls-cli", "greeting"); !strings.Contains(out, `"hello"`) {
		t.Fatalf("get with DALV_CA_FILE printed %q", out)
	}
	cliFails(t, env, "", []string{"get", "tls-cli", "greeting"}, "certificate")
	cliFails(t, env, "", []string{"get", "--ca-file", notPEM, "tls-cli", "greeting"}, "no PEM certificate")

	benchEnv := append(env, "DALV_JWT_SECRET="+testSecret)
	out := cliOK(t, benchEnv, "bench", "--url", srv.URL(), "--ca-file", caFile, "--scenario", "catchup", "--runs", "1",
		"--catchup-commits", "50", "--catchup-keys", "5", "--catchup-pulls", "3")
	if !strings.Contains(out, "over TLS") || !strings.Contains(out, "answer size (protobuf)") {
		t.Fatalf("dalv bench over https printed:\n%s", out)
	}
}

// TestTLSDevSelfSigned checks `dalv serve --dev --tls-self-signed`: it
// serves HTTPS with a certificate kept in the data directory (key mode
// 0600), prints its fingerprint and the file to trust, and reuses it after
// a restart; without --dev the flag is refused.
func TestTLSDevSelfSigned(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	srv := startServerOn(t, data, "--dev", "--tls-self-signed")
	certFile := filepath.Join(data, "dev-tls.crt")
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s holds no PEM certificate", certFile)
	}
	sum := sha256.Sum256(block.Bytes)
	fp := strings.ToUpper(hex.EncodeToString(sum[:]))
	if out := strings.ReplaceAll(srv.Stdout(), ":", ""); !strings.Contains(out, fp) || !strings.Contains(srv.Stdout(), "--ca-file "+certFile) {
		t.Fatalf("serve printed:\n%s\nwant the fingerprint %s and --ca-file %s", srv.Stdout(), fp, certFile)
	}
	if fi, err := os.Stat(filepath.Join(data, "dev-tls.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("dev-tls.key: %v, %v; want mode 0600", fi, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	for _, host := range []string{"127.0.0.1", "localhost"} {
		_, port, _ := net.SplitHostPort(srv.Addr)
		resp, err := tlsHTTPClient(pool).Get("https://" + net.JoinHostPort(host, port) + "/healthz")
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			t.Fatalf("%s: %s over %s, want 200 over HTTP/2", host, resp.Status, resp.Proto)
		}
	}
	if err := srv.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	srv = startServerOn(t, data, "--dev", "--tls-self-signed")
	if b2, err := os.ReadFile(certFile); err != nil || !bytes.Equal(b, b2) {
		t.Fatalf("a restart replaced the development certificate (%v)", err)
	}
	if !strings.Contains(srv.Stdout(), "kept in "+certFile) {
		t.Fatalf("after a restart serve printed:\n%s", srv.Stdout())
	}

	cmd := exec.Command(binary, "serve", "--addr", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "data"), "--tls-self-signed")
	cmd.Env = append(os.Environ(), testEnv()...)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "--tls-self-signed is for development") {
		t.Fatalf("--tls-self-signed without --dev: %v\n%s", err, out)
	}
}

// TestTLSSIGHUP checks that SIGHUP rereads the certificate files even when
// the poll saw no change, and that new connections then get what is in them.
func TestTLSSIGHUP(t *testing.T) {
	t.Parallel()
	srv, ca, _, _ := startTLSServer(t)
	reloads := func() int { return strings.Count(srv.Stderr(), "TLS certificate reloaded") }
	before := reloads()
	if err := syscall.Kill(srv.PID(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	wait.ForEvery(t, 10*time.Second, 20*time.Millisecond, func() error {
		if reloads() == before {
			return fmt.Errorf("no reload logged after SIGHUP:\n%s", srv.Stderr())
		}
		return nil
	})
	if serial, err := peerSerial(srv.Addr, ca.pool()); err != nil || serial != 1 {
		t.Fatalf("after SIGHUP a new connection got serial %d (%v), want 1", serial, err)
	}
	select {
	case <-srv.Done():
		t.Fatalf("SIGHUP stopped the server: %v", srv.ExitErr())
	default:
	}
}
