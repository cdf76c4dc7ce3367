package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/dalvdb/dalv/auth"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// These tests hold a server's connections as an attacker would: headers
// announcing a body that never comes, bodies trickled a byte a second, and
// more connections than the server takes.

// raiseFileLimit lets the test process open n more files, failing the test
// if the hard limit does not allow it.
func raiseFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	if rl.Cur >= n {
		return
	}
	if rl.Max < n {
		t.Fatalf("this test opens %d connections; the hard limit on open files is %d (raise it: ulimit -Hn)", n, rl.Max)
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("setrlimit to %d open files: %v", rl.Max, err)
	}
}

// rawConn is a client connection the test writes HTTP/1.1 to by hand.
type rawConn struct {
	net.Conn
	br    *bufio.Reader
	start time.Time // when its request's headers were sent
}

// sendHeaders dials srv and sends a POST's headers for path announcing a
// body of contentLength bytes, followed by body (possibly shorter). auth is
// the Authorization header's value, or empty for none. The connection is
// closed when the test ends.
func sendHeaders(t *testing.T, srv *proc.Server, path, auth string, contentLength int, body []byte) (*rawConn, error) {
	conn, err := net.DialTimeout("tcp", srv.Addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/proto\r\nContent-Length: %d\r\n", path, srv.Addr, contentLength)
	if auth != "" {
		fmt.Fprintf(&b, "Authorization: %s\r\n", auth)
	}
	b.WriteString("\r\n")
	b.Write(body)
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, err
	}
	return &rawConn{Conn: conn, br: bufio.NewReader(conn), start: time.Now()}, nil
}

// answer reads the response to c's request by deadline.
func (c *rawConn) answer(deadline time.Time) (*http.Response, string, error) {
	_ = c.SetReadDeadline(deadline)
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return nil, "", err
	}
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

// syncBody is a pull's request body for device.
func syncBody(t *testing.T, device string) []byte {
	t.Helper()
	b, err := proto.Marshal(&dalvv1.SyncRequest{DeviceId: device})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// freshSync times one pull by user on a connection of its own, as a device
// that has just come online makes it.
func freshSync(t *testing.T, srv *proc.Server, user string) (time.Duration, error) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	client := dalvv1connect.NewClientServiceClient(hc, srv.URL(), bearer(token(t, user)))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := client.Sync(ctx, connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone"}))
	return time.Since(start), err
}

// openAll opens n connections with open, 16 at a time, failing the test on
// the first error.
func openAll(t *testing.T, n int, open func(i int) (*rawConn, error)) []*rawConn {
	t.Helper()
	conns := make([]*rawConn, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := open(i)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	return conns
}

// TestHeldConnectionsDoNotStarveSync holds a server limited to 4,096 open
// files with 4,000 connections that send a request's headers, announcing a
// 100-byte body, without an accepted token and never send the body, and
// 300 that trickle a body a byte a second with a valid token. Another
// user's pull on a new connection must answer within a second meanwhile,
// the first must all be refused at once, and the trickled bodies cut at the
// body deadline.
func TestHeldConnectionsDoNotStarveSync(t *testing.T) {
	t.Parallel()
	const (
		silent      = 4000
		trickling   = 300
		bodyTimeout = 4 * time.Second
	)
	raiseFileLimit(t, silent+trickling+1000)
	srv := startServerWith(t, proc.Options{NoFile: 4096, Args: []string{"--body-timeout", bodyTimeout.String()}})
	if took, err := freshSync(t, srv, "victim"); err != nil {
		t.Fatalf("victim's first pull (%v): %v", took, err)
	}

	forged := "Bearer " + token(t, "mallory")[:20] + "x.y"
	held := openAll(t, silent, func(i int) (*rawConn, error) {
		auth := "" // no token at all, or a forged one
		if i%2 == 1 {
			auth = forged
		}
		return sendHeaders(t, srv, dalvv1connect.ClientServiceSyncProcedure, auth, 100, nil)
	})
	valid := "Bearer " + token(t, "mallory")
	trickle := openAll(t, trickling, func(int) (*rawConn, error) {
		return sendHeaders(t, srv, dalvv1connect.ClientServiceSyncProcedure, valid, 100, nil)
	})
	stopTrickle := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopTrickle:
				return
			case <-tick.C:
			}
			for _, c := range trickle {
				_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
				_, _ = c.Write([]byte{0})
			}
		}
	}()
	defer func() {
		close(stopTrickle)
		<-trickled
	}()

	// Another user's pulls, each on a new connection, while all are held.
	var worst time.Duration
	for i := range 5 {
		took, err := freshSync(t, srv, "victim")
		if err != nil {
			t.Fatalf("victim's pull %d while %d connections are held (%v): %v", i+1, silent+trickling, took, err)
		}
		worst = max(worst, took)
	}
	t.Logf("victim's slowest of 5 pulls on new connections while %d connections were held: %v", silent+trickling, worst)
	if worst >= time.Second {
		t.Errorf("victim's slowest pull took %v, want under a second", worst)
	}
	if heldFor := time.Since(trickle[len(trickle)-1].start); heldFor >= bodyTimeout {
		t.Fatalf("measured %v after the last trickle began, past the body deadline of %v: the measure did not overlap the hold", heldFor, bodyTimeout)
	}

	// The connections without an accepted token were refused, promptly.
	for i, c := range held {
		resp, body, err := c.answer(time.Now().Add(time.Second))
		if err != nil {
			t.Fatalf("connection %d without an accepted token: no answer: %v", i, err)
		}
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "unauthenticated") {
			t.Fatalf("connection %d without an accepted token: HTTP %d %q, want unauthenticated", i, resp.StatusCode, body)
		}
	}
	// The trickled bodies are cut at the deadline.
	for i, c := range trickle {
		resp, body, err := c.answer(c.start.Add(bodyTimeout + 5*time.Second))
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("trickling connection %d still open %v after its headers, with a body deadline of %v", i, time.Since(c.start), bodyTimeout)
			}
			continue // cut without an answer
		}
		if !strings.Contains(body, "deadline_exceeded") {
			t.Fatalf("trickling connection %d: HTTP %d %q, want deadline_exceeded", i, resp.StatusCode, body)
		}
		if took := time.Since(c.start); took < bodyTimeout-100*time.Millisecond {
			t.Fatalf("trickling connection %d cut after %v, before the body deadline of %v", i, took, bodyTimeout)
		}
	}
}

// TestBodyNeverSentRefusedUnauthenticated sends a request's headers with a
// credential that is not accepted, announcing a body it never sends: the
// server answers unauthenticated at once, over HTTP/1.1 and over HTTP/2.
func TestBodyNeverSentRefusedUnauthenticated(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	for _, tc := range []struct {
		name, path, auth string
	}{
		{"device, forged token", dalvv1connect.ClientServiceSyncProcedure, "Bearer e30.e30.c2ln"},
		{"device, no token", dalvv1connect.ClientServiceSyncProcedure, ""},
		{"device stream, expired token", dalvv1connect.ClientServiceWatchProcedure, "Bearer " + expiredToken(t, "alice")},
		{"backend, wrong key", dalvv1connect.BackendServiceCommitProcedure, "Bearer not-the-backend-key-0123"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := sendHeaders(t, srv, tc.path, tc.auth, 100, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, body, err := c.answer(time.Now().Add(5 * time.Second))
			took := time.Since(c.start)
			if err != nil {
				t.Fatalf("no answer within 5s: %v", err)
			}
			if took > time.Second || !strings.Contains(body, "unauthenticated") {
				t.Errorf("after %v: HTTP %d %q, want unauthenticated within a second", took, resp.StatusCode, body)
			}
		})
	}
	t.Run("gRPC over h2c", func(t *testing.T) {
		t.Parallel()
		body, _ := io.Pipe() // never written: the body never comes
		defer body.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL()+dalvv1connect.ClientServiceSyncProcedure, body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		req.Header.Set("Authorization", "Bearer e30.e30.c2ln")
		start := time.Now()
		resp, err := h2cClient().Do(req)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		status := resp.Header.Get("Grpc-Status") + resp.Trailer.Get("Grpc-Status")
		if took := time.Since(start); took > time.Second || status != fmt.Sprint(int(connect.CodeUnauthenticated)) {
			t.Errorf("after %v: grpc-status %q, want %d (unauthenticated) within a second", took, status, connect.CodeUnauthenticated)
		}
	})
}

// expiredToken mints a device token for user that expired an hour ago.
func expiredToken(t *testing.T, user string) string {
	t.Helper()
	tok, err := auth.Mint([]byte(testSecret), user, time.Hour, time.Now().Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestConnectionCap checks --max-connections: past it, a new connection
// waits about a second for room and is then closed unanswered, while the
// connections already admitted keep theirs; an idle keep-alive connection
// is closed to admit a new one.
func TestConnectionCap(t *testing.T) {
	t.Parallel()
	const limit = 4
	t.Run("refused after a wait", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t, "--max-connections", fmt.Sprint(limit), "--body-timeout", "1m")
		body := syncBody(t, "phone")
		// Every slot holds a request whose body is yet to come.
		busy := openAll(t, limit, func(int) (*rawConn, error) {
			return sendHeaders(t, srv, dalvv1connect.ClientServiceSyncProcedure, "Bearer "+token(t, "mallory"), len(body), nil)
		})
		took, err := freshSync(t, srv, "victim")
		if err == nil {
			t.Fatalf("a pull past the cap of %d connections answered after %v, want it refused", limit, took)
		}
		if took < 900*time.Millisecond || took > 4*time.Second {
			t.Errorf("a connection past the cap was refused after %v (%v), want after a wait of about a second", took, err)
		}
		// The admitted requests keep their connections and complete.
		for i, c := range busy {
			if _, err := c.Write(body); err != nil {
				t.Fatalf("admitted connection %d: %v", i, err)
			}
			resp, answer, err := c.answer(time.Now().Add(5 * time.Second))
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("admitted connection %d: %v %q", i, err, answer)
			}
		}
	})
	t.Run("idle closed first", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t, "--max-connections", fmt.Sprint(limit))
		body := syncBody(t, "phone")
		// Every slot holds a keep-alive connection, idle after one pull.
		idle := make([]*rawConn, limit)
		for i := range idle {
			c, err := sendHeaders(t, srv, dalvv1connect.ClientServiceSyncProcedure, "Bearer "+token(t, fmt.Sprintf("idler%d", i)), len(body), body)
			if err != nil {
				t.Fatal(err)
			}
			if resp, answer, err := c.answer(time.Now().Add(5 * time.Second)); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("keep-alive connection %d: %v %q", i, err, answer)
			}
			idle[i] = c
			if i == limit-1 {
				break // a look at /metrics would take a slot past the cap
			}
			// The server marks a connection idle after its answer is
			// written, which the client may read first: wait until it
			// has, so that the connections went idle in order.
			wait.For(t, 10*time.Second, func() error {
				m := metric(scrape(t, srv), "dalv_connections_idle", nil)
				if got := m.GetGauge().GetValue(); got < float64(i+1) {
					return fmt.Errorf("%v connections idle, want %d", got, i+1)
				}
				return nil
			})
		}
		took, err := freshSync(t, srv, "victim")
		if err != nil || took >= time.Second {
			t.Fatalf("a pull past the cap with idle connections open: %v after %v, want an answer within a second", err, took)
		}
		// The connection idle longest made room.
		_ = idle[0].SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := idle[0].br.ReadByte(); err == nil || isTimeout(err) {
			t.Errorf("the connection idle longest is still open (read: %v)", err)
		}
		_ = idle[limit-1].SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := idle[limit-1].br.ReadByte(); !isTimeout(err) {
			t.Errorf("the connection idle least was closed (read: %v), want only the one idle longest", err)
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
