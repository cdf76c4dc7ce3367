package server

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/wait"
)

// counter reads a counter of reg with one label, 0 when absent.
func counter(t *testing.T, reg *prometheus.Registry, family, name, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, name) == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestStreamWriteDeadlineHTTP2 checks that the write deadline also cuts a
// watch over HTTP/2 (h2c), where it applies to the stream rather than the
// connection: a client that never reads a 10 MB catch-up is cut once a
// message has waited StreamWriteTimeout, and sees its stream fail.
func TestStreamWriteDeadlineHTTP2(t *testing.T) {
	t.Parallel()
	s, url, reg := testServer(t, Config{StreamWriteTimeout: 300 * time.Millisecond})
	h2url, hc := h2cServer(t, s)

	const commits = 12
	backend := dalvv1connect.NewBackendServiceClient(http.DefaultClient, url)
	rng := rand.NewChaCha8([32]byte{2})
	for i := range commits {
		val := make([]byte, 900<<10) // random: gzip does not shrink it
		_, _ = rng.Read(val)
		req := connect.NewRequest(&dalvv1.CommitRequest{User: "mute", Ops: []*dalvv1.Op{{
			Kind: dalvv1.OpKind_OP_KIND_PUT, Key: fmt.Sprint("k", i), Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: val}},
		}}})
		req.Header().Set("Authorization", "Bearer "+testKey)
		if _, err := backend.Commit(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}

	client := dalvv1connect.NewClientServiceClient(hc, h2url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "d"})
	req.Header().Set("Authorization", "Bearer "+token(t, "mute"))
	stream, err := client.Watch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	// Read nothing until the server has cut the stream.
	deadline := time.Now().Add(20 * time.Second)
	for counter(t, reg, "dalv_stream_write_timeouts_total", "stream", "device") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the never-read watch was not cut by the write deadline within 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	n := 0
	for stream.Receive() {
		n++
	}
	if stream.Err() == nil || n >= commits {
		t.Fatalf("the cut watch delivered %d events and ended with %v; want fewer than %d and an error", n, stream.Err(), commits)
	}
	// The client sees its stream cut when the deadline passes; the handler,
	// blocked in that write until then, returns and is counted a moment
	// later.
	wait.For(t, 10*time.Second, func() error {
		if got := requests(t, reg, dalvv1connect.ClientServiceWatchProcedure, "resource_exhausted"); got != 1 {
			return fmt.Errorf("dalv_requests_total{Watch, resource_exhausted} = %v, want 1", got)
		}
		return nil
	})
}

// h2cServer serves s's handler over HTTP/2 without TLS and returns a
// client for it.
func h2cServer(t *testing.T, s *Server) (url string, hc *http.Client) {
	t.Helper()
	h2 := httptest.NewUnstartedServer(s.Handler())
	h2.Config.Protocols = new(http.Protocols)
	h2.Config.Protocols.SetUnencryptedHTTP2(true)
	h2.Start()
	t.Cleanup(h2.Close)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return h2.URL, &http.Client{Transport: tr}
}

// TestStreamIdleOverHTTP2 checks that an idle watch over HTTP/2 that
// reads everything lives on across write timeouts: HTTP/2 resets a stream
// whose write deadline passes even when nothing is being written, so the
// deadline must not outlive the message it was set for. Each idle gap is
// four write timeouts long; the timeout leaves a heartbeat's write room on
// a machine busy with the race-enabled suite (at 50 ms, one such write
// took longer, and its stream was reset).
func TestStreamIdleOverHTTP2(t *testing.T) {
	t.Parallel()
	s, _, reg := testServer(t, Config{StreamWriteTimeout: 250 * time.Millisecond, Heartbeat: time.Second})
	url, hc := h2cServer(t, s)
	client := dalvv1connect.NewClientServiceClient(hc, url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "d"})
	req.Header().Set("Authorization", "Bearer "+token(t, "idle"))
	stream, err := client.Watch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for i := range 3 {
		if !stream.Receive() {
			t.Fatalf("the idle watch ended after %d heartbeats: %v", i, stream.Err())
		}
		if !stream.Msg().GetHeartbeat() {
			t.Fatalf("event %d: %v, want a heartbeat", i, stream.Msg())
		}
	}
	if n := counter(t, reg, "dalv_stream_write_timeouts_total", "stream", "device"); n != 0 {
		t.Errorf("%v streams ended by the write deadline, want 0", n)
	}
}

// TestAdmitWatchConcurrent checks that the caps hold when many watches of
// one device and one user open at once, and that every slot comes back.
func TestAdmitWatchConcurrent(t *testing.T) {
	t.Parallel()
	s, _, _ := testServer(t, Config{MaxWatchesPerUser: 5, MaxWatchesPerDevice: 3})
	for _, tc := range []struct {
		name   string
		device func(i int) string
		want   int
	}{
		{"one device", func(int) string { return "d" }, 3},
		{"many devices", func(i int) string { return fmt.Sprint("d", i) }, 5},
	} {
		var (
			mu       sync.Mutex
			releases []func()
			wg       sync.WaitGroup
		)
		for i := range 50 {
			wg.Go(func() {
				if release, err := s.admitWatch("u", tc.device(i)); err == nil {
					mu.Lock()
					releases = append(releases, release)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if got := len(releases); got != tc.want {
			t.Errorf("%s: %d of 50 watches admitted at once, want %d", tc.name, got, tc.want)
		}
		for _, release := range releases {
			release()
			release() // a second call changes nothing
		}
		if len(s.watches.users)+len(s.watches.devices) != 0 {
			t.Errorf("%s: counts left after every release: %v %v", tc.name, s.watches.users, s.watches.devices)
		}
	}
}
