package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/auth"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// rawRequest opens a connection to the server at base and sends a POST's
// request line and headers, announcing a body of contentLength bytes, and
// then body (which may be shorter). The connection is closed when the test
// ends.
func rawRequest(t *testing.T, base, path string, header http.Header, contentLength int, body string) (net.Conn, *bufio.Reader) {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", path, u.Host, contentLength)
	if err := header.Write(&b); err != nil {
		t.Fatal(err)
	}
	b.WriteString("\r\n" + body)
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	return conn, bufio.NewReader(conn)
}

// readAnswer reads the response on conn within timeout and returns it with
// its body.
func readAnswer(t *testing.T, conn net.Conn, br *bufio.Reader, timeout time.Duration) (*http.Response, string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer within %v: %v", timeout, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read the answer's body: %v", err)
	}
	return resp, string(body)
}

// serverCloses fails unless the server closes conn within timeout.
func serverCloses(t *testing.T, conn net.Conn, br *bufio.Reader, timeout time.Duration) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	if _, err := br.ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("connection still open %v after the answer (read: %v)", timeout, err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestRefusedBeforeBody checks that a request whose credential is missing
// or not accepted is refused from its headers, without waiting for a body
// that never comes, and that the connection is then closed.
func TestRefusedBeforeBody(t *testing.T) {
	t.Parallel()
	_, base, _ := testServer(t, Config{})
	proto := http.Header{"Content-Type": {"application/proto"}}
	with := func(h http.Header, k, v string) http.Header {
		h = h.Clone()
		h.Set(k, v)
		return h
	}
	for _, tc := range []struct {
		name, path string
		header     http.Header
		status     int
		want       string
	}{
		{"device, no token", dalvv1connect.ClientServiceSyncProcedure, proto, http.StatusUnauthorized, `"code":"unauthenticated"`},
		{"device, forged token", dalvv1connect.ClientServiceSyncProcedure, with(proto, "Authorization", "Bearer e30.e30.c2ln"), http.StatusUnauthorized, `"code":"unauthenticated"`},
		{"device stream, no token", dalvv1connect.ClientServiceWatchProcedure, http.Header{"Content-Type": {"application/connect+proto"}}, http.StatusOK, "unauthenticated"},
		{"backend, wrong key", dalvv1connect.BackendServiceCommitProcedure, with(proto, "Authorization", "Bearer not-the-key-0123456789"), http.StatusUnauthorized, `"code":"unauthenticated"`},
		{"a content type Connect does not speak", dalvv1connect.ClientServiceSyncProcedure, http.Header{"Content-Type": {"text/plain"}}, http.StatusUnauthorized, "unauthenticated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conn, br := rawRequest(t, base, tc.path, tc.header, 100, "")
			start := time.Now()
			resp, body := readAnswer(t, conn, br, 2*time.Second)
			if took := time.Since(start); took > time.Second {
				t.Errorf("answered after %v, want at once", took)
			}
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.want) {
				t.Errorf("HTTP %d %q, want %d with %s", resp.StatusCode, body, tc.status, tc.want)
			}
			if !resp.Close {
				t.Error("the answer keeps the connection, whose unread body would be taken for the next request")
			}
			serverCloses(t, conn, br, 2*time.Second)
		})
	}
}

// countingVerifier counts the tokens it verifies.
type countingVerifier struct {
	auth.Verifier
	n atomic.Int64
}

func (v *countingVerifier) Verify(ctx context.Context, tok string) (*auth.Claims, error) {
	v.n.Add(1)
	return v.Verifier.Verify(ctx, tok)
}

// TestTokenVerifiedOnce checks that a device request's token is verified
// once, before its body is read, for unary calls and streams alike.
func TestTokenVerifiedOnce(t *testing.T) {
	t.Parallel()
	hs, err := auth.NewHS256(testSecret, auth.HS256Options{})
	if err != nil {
		t.Fatal(err)
	}
	v := &countingVerifier{Verifier: hs}
	_, base, _ := testServer(t, Config{Verifier: v, Heartbeat: time.Hour})
	client := dalvv1connect.NewClientServiceClient(http.DefaultClient, base)
	tok := "Bearer " + token(t, "hana")

	req := connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone"})
	req.Header().Set("Authorization", tok)
	if _, err := client.Sync(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if got := v.n.Load(); got != 1 {
		t.Errorf("a sync verified its token %d times, want 1", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wreq := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "phone"})
	wreq.Header().Set("Authorization", tok)
	stream, err := client.Watch(ctx, wreq)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatalf("watch: %v", stream.Err())
	}
	if got := v.n.Load(); got != 2 {
		t.Errorf("a sync and a watch verified tokens %d times, want 2", got)
	}
}

// TestRefusedWithBodySent checks that a client whose token is not accepted
// reads the refusal, not a reset connection, when it sent a whole body the
// server never read: small, or past what net/http drains.
func TestRefusedWithBodySent(t *testing.T) {
	t.Parallel()
	_, base, _ := testServer(t, Config{})
	client := dalvv1connect.NewClientServiceClient(http.DefaultClient, base)
	for _, size := range []int{10, 100 << 10, 4 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			req := connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone", Ops: []*dalvv1.Op{{
				Kind: dalvv1.OpKind_OP_KIND_PUT, Key: "k",
				Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: make([]byte, size)}},
			}}})
			req.Header().Set("Authorization", "Bearer e30.e30.c2ln")
			for i := range 5 {
				if _, err := client.Sync(context.Background(), req); connect.CodeOf(err) != connect.CodeUnauthenticated {
					t.Fatalf("try %d: %v, want unauthenticated", i+1, err)
				}
			}
		})
	}
}
