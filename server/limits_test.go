package server

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// TestRateLimiter checks that a user's burst is allowed and the next
// request is not, that users have buckets of their own, and that buckets
// idle past limiterIdle are dropped.
func TestRateLimiter(t *testing.T) {
	t.Parallel()
	rl := newRateLimiter(0.001, 2, time.Now) // a token every 1000 s: none comes back during the test
	for i := range 2 {
		if !rl.allow("erin") {
			t.Fatalf("request %d within the burst of 2 refused", i+1)
		}
	}
	if rl.allow("erin") {
		t.Error("request past the burst allowed")
	}
	if !rl.allow("frank") {
		t.Error("another user's first request refused: users share a bucket")
	}
	buckets := func() int {
		n := 0
		for i := range rl.shards {
			n += len(rl.shards[i].buckets)
		}
		return n
	}
	if n := buckets(); n != 2 {
		t.Fatalf("%d buckets for two users, want 2", n)
	}
	rl.sweep(time.Now().Add(limiterIdle + time.Second))
	if n := buckets(); n != 0 {
		t.Errorf("%d buckets after everyone was idle past %v, want 0", n, limiterIdle)
	}
	if !rl.allow("erin") {
		t.Error("a user whose bucket was dropped is refused: it should start full")
	}
}

// TestRateLimiterClock checks that the limiter reads the clock it is given:
// a token comes back when that clock, not the wall clock, has moved on.
func TestRateLimiterClock(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	rl := newRateLimiter(1, 1, clock)
	if !rl.allow("erin") {
		t.Fatal("the first request refused")
	}
	if rl.allow("erin") {
		t.Fatal("a request past the burst allowed before the clock moved")
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	if !rl.allow("erin") {
		t.Error("refused a second after a token per second: the limiter does not read the given clock")
	}
}

// TestLimitedBody checks that reading a body past the limit fails with
// resource_exhausted naming the flag, and that a body within it reads whole.
func TestLimitedBody(t *testing.T) {
	t.Parallel()
	within := &limitedBody{ReadCloser: io.NopCloser(strings.NewReader("12345678")), max: 8}
	if b, err := io.ReadAll(within); err != nil || string(b) != "12345678" {
		t.Errorf("a body of exactly the limit: %q, %v", b, err)
	}
	over := &limitedBody{ReadCloser: io.NopCloser(strings.NewReader("123456789")), max: 8}
	_, err := io.ReadAll(over)
	wantLimitErr(t, err, "--max-request-bytes")
}

// TestLimitedGzip checks that a compressed body that decompresses past the
// limit fails with resource_exhausted saying so, though it is small on the
// wire, and that the decompressor is reusable after Reset.
func TestLimitedGzip(t *testing.T) {
	t.Parallel()
	zipped := func(n int) io.Reader {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		_, _ = w.Write(bytes.Repeat([]byte("x"), n))
		_ = w.Close()
		return &b
	}
	d := &limitedGzip{max: 1000}
	if err := d.Reset(zipped(5000)); err != nil {
		t.Fatal(err)
	}
	_, err := io.ReadAll(d)
	wantLimitErr(t, err, "once decompressed")
	if err := d.Reset(zipped(1000)); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(d); err != nil || len(b) != 1000 {
		t.Errorf("after Reset, a body of the limit: %d bytes, %v", len(b), err)
	}
}

func wantLimitErr(t *testing.T, err error, says string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted || !strings.Contains(err.Error(), says) {
		t.Errorf("read past the limit: %v, want resource_exhausted saying %q", err, says)
	}
}

// TestBodyTimeout checks that a body still arriving BodyTimeout after its
// headers is cut off with deadline_exceeded naming the flag, and its
// connection closed.
func TestBodyTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	_, base, _ := testServer(t, Config{BodyTimeout: timeout})
	header := http.Header{"Content-Type": {"application/proto"}, "Authorization": {"Bearer " + token(t, "ivy")}}
	start := time.Now()
	conn, br := rawRequest(t, base, dalvv1connect.ClientServiceSyncProcedure, header, 100, "\x0a\x05phone")
	resp, body := readAnswer(t, conn, br, 5*time.Second)
	if took := time.Since(start); took < timeout || took > timeout+2*time.Second {
		t.Errorf("answered %v after the headers, want just after %v", took, timeout)
	}
	if !strings.Contains(body, `"code":"deadline_exceeded"`) || !strings.Contains(body, "--body-timeout") {
		t.Errorf("HTTP %d %q, want deadline_exceeded naming --body-timeout", resp.StatusCode, body)
	}
	serverCloses(t, conn, br, 2*time.Second)
}

// TestBodyTimeoutEndsWithBody checks that the body's deadline does not
// outlive the body: a watch stream lives on past it, over HTTP/1.1 and
// HTTP/2.
func TestBodyTimeoutEndsWithBody(t *testing.T) {
	t.Parallel()
	const timeout = 100 * time.Millisecond
	_, base, _ := testServer(t, Config{BodyTimeout: timeout, Heartbeat: 20 * time.Millisecond})
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	for name, hc := range map[string]*http.Client{"HTTP/1.1": http.DefaultClient, "h2c": {Transport: h2c}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client := dalvv1connect.NewClientServiceClient(hc, base)
			req := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "phone"})
			req.Header().Set("Authorization", "Bearer "+token(t, "ivy"))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream, err := client.Watch(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			start := time.Now()
			for time.Since(start) < 5*timeout {
				if !stream.Receive() {
					t.Fatalf("the watch ended %v after it began: %v", time.Since(start), stream.Err())
				}
			}
		})
	}
}
