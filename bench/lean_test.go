package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/wait"
)

// leanServer answers Sync with the version it is told to, after waiting for
// release when block is set, or with err; it checks what the lean client
// sends as a Connect server sees it.
type leanServer struct {
	dalvv1connect.UnimplementedClientServiceHandler
	t       *testing.T
	err     error
	block   atomic.Bool
	release chan struct{}
	started chan struct{}
}

func (s *leanServer) Sync(ctx context.Context, req *connect.Request[dalvv1.SyncRequest]) (*connect.Response[dalvv1.SyncResponse], error) {
	if got := req.Header().Get("Authorization"); got != "Bearer tok" {
		s.t.Errorf("Authorization = %q, want the device's", got)
	}
	if s.block.Load() {
		s.started <- struct{}{}
		select {
		case <-s.release:
		case <-ctx.Done():
		}
	}
	if s.err != nil {
		return nil, s.err
	}
	return connect.NewResponse(&dalvv1.SyncResponse{Status: dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED, Version: req.Msg.GetBatch() + 10}), nil
}

// TestLeanConn checks the lean client against connect-go's handlers: an
// answer decoded, a request in Connect's unary form with a length (not
// chunked), a Connect error with its code and message, the health check's
// status, a call cut short by its context, and a new connection after the
// server closes one, between calls or with an answer.
func TestLeanConn(t *testing.T) {
	t.Parallel()
	ls := &leanServer{t: t, release: make(chan struct{}), started: make(chan struct{}, 1)}
	checker := grpchealth.NewStaticChecker()
	mux := http.NewServeMux()
	mux.Handle(dalvv1connect.NewClientServiceHandler(ls))
	mux.Handle(grpchealth.NewHandler(checker))
	var conns atomic.Int32
	var closeNext atomic.Bool
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength < 0 || len(r.TransferEncoding) > 0 || r.Header.Get("Content-Type") != "application/proto" || r.Header.Get("Connect-Protocol-Version") != "1" {
			t.Errorf("request %s: length %d, transfer encoding %q, headers %v: want Connect's unary form with a length", r.URL.Path, r.ContentLength, r.TransferEncoding, r.Header)
		}
		if closeNext.Swap(false) {
			w.Header().Set("Connection", "close")
		}
		mux.ServeHTTP(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	pool, err := newLeanPool(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := pool.get()
	defer c.close()
	ctx := context.Background()
	auth := authorization("tok")
	resp := new(dalvv1.SyncResponse)
	for batch := uint64(1); batch <= 3; batch++ {
		if err := c.call(ctx, dalvv1connect.ClientServiceSyncProcedure, auth, &dalvv1.SyncRequest{DeviceId: "d", Batch: batch}, resp); err != nil {
			t.Fatalf("sync %d: %v", batch, err)
		}
		if resp.GetVersion() != batch+10 || resp.GetStatus() != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED {
			t.Fatalf("sync %d answered %v, want accepted at version %d", batch, resp, batch+10)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("three calls opened %d connections, want one kept alive", n)
	}

	body, err := c.unary(ctx, healthCheckProcedure, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := healthStatus(body); err != nil || st != grpchealth.StatusServing {
		t.Errorf("health check = %v, %v; want serving", st, err)
	}
	checker.SetStatus("", grpchealth.StatusNotServing)
	body, err = c.unary(ctx, healthCheckProcedure, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := healthStatus(body); err != nil || st != grpchealth.StatusNotServing {
		t.Errorf("health check = %v, %v; want not serving", st, err)
	}
	if _, err := healthStatus([]byte{0x08}); err == nil {
		t.Error("a truncated health answer decoded")
	}

	ls.err = connect.NewError(connect.CodeResourceExhausted, errors.New("slow down"))
	err = c.call(ctx, dalvv1connect.ClientServiceSyncProcedure, auth, &dalvv1.SyncRequest{Batch: 4}, resp)
	if connect.CodeOf(err) != connect.CodeResourceExhausted || err.Error() != "resource_exhausted: slow down" {
		t.Errorf("a refused sync: %v, want resource_exhausted with the server's message", err)
	}
	ls.err = nil

	// A call whose context ends while the server holds it returns at once
	// with the context's error; the next call dials again.
	ls.block.Store(true)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.call(cctx, dalvv1connect.ClientServiceSyncProcedure, auth, &dalvv1.SyncRequest{Batch: 5}, resp)
	}()
	<-ls.started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("a cancelled call: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled call did not return")
	}
	ls.block.Store(false)
	before := conns.Load()
	if err := c.call(ctx, dalvv1connect.ClientServiceSyncProcedure, auth, &dalvv1.SyncRequest{Batch: 6}, resp); err != nil || resp.GetVersion() != 16 {
		t.Fatalf("the call after a cancelled one: %v, %v", resp, err)
	}
	if n := conns.Load(); n != before+1 {
		t.Errorf("the call after a cancelled one opened %d connections, want one", n-before)
	}

	// A connection the server closed while it idled is dialled again, and
	// the call made on it.
	srv.CloseClientConnections()
	if err := c.call(ctx, dalvv1connect.ClientServiceSyncProcedure, auth, &dalvv1.SyncRequest{Batch: 6}, resp); err != nil || resp.GetVersion() != 16 {
		t.Fatalf("the call after the server closed the connection: %v, %v", resp, err)
	}
	before = conns.Load() - 1

	// An answer with "Connection: close" leaves the next call to dial.
	closeNext.Store(true)
	for batch := uint64(7); batch <= 8; batch++ {
		if err := c.call(ctx, dalvv1connect.ClientServiceSyncProcedure, auth, &dalvv1.SyncRequest{Batch: batch}, resp); err != nil {
			t.Fatalf("sync %d: %v", batch, err)
		}
	}
	if n := conns.Load(); n != before+2 {
		t.Errorf("after an answer closing its connection: %d connections in all, want %d", n, before+2)
	}
}

// TestLeanPoolKeepsConnections checks that the lean client holds open only
// as many connections as calls were in flight at once, whichever devices
// made them, and closes them with the clients.
func TestLeanPoolKeepsConnections(t *testing.T) {
	t.Parallel()
	ls := &leanServer{t: t, release: make(chan struct{}), started: make(chan struct{}, 2)}
	var opened, closed atomic.Int32
	srv := httptest.NewUnstartedServer(http.NewServeMux())
	mux := srv.Config.Handler.(*http.ServeMux)
	mux.Handle(dalvv1connect.NewClientServiceHandler(ls))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed:
			closed.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c, err := newClients(Config{Client: ClientLean}, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	auth := authorization("tok")
	req := &dalvv1.SyncRequest{Batch: 1}
	for i := range 3 { // three devices, one after another
		if _, err := c.syncer(auth)(ctx, req); err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
	}
	if n := opened.Load(); n != 1 {
		t.Fatalf("three devices one after another opened %d connections, want 1", n)
	}
	ls.block.Store(true)
	errs := make(chan error, 2)
	for range 2 {
		go func() { _, err := c.syncer(auth)(ctx, req); errs <- err }()
	}
	<-ls.started
	<-ls.started
	close(ls.release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := opened.Load(); n != 2 {
		t.Fatalf("two calls at once after those: %d connections opened in all, want 2", n)
	}
	c.close()
	wait.For(t, 10*time.Second, func() error {
		if n := closed.Load(); n != 2 {
			return fmt.Errorf("closing the clients: the server saw %d of 2 connections closed", n)
		}
		return nil
	})
}

// TestLeanConnTLS checks the lean client against an https:// server whose
// certificate the given TLS configuration trusts.
func TestLeanConnTLS(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker()))
	srv := httptest.NewTLSServer(mux)
	defer srv.Close()
	pool, err := newLeanPool(srv.URL, srv.Client().Transport.(*http.Transport).TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.close()
	c := pool.get()
	defer pool.put(c)
	body, err := c.unary(context.Background(), healthCheckProcedure, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := healthStatus(body); err != nil || st != grpchealth.StatusServing {
		t.Errorf("health check over TLS = %v, %v; want serving", st, err)
	}

	untrusting, err := newLeanPool(srv.URL, nil) // the system's roots
	if err != nil {
		t.Fatal(err)
	}
	defer untrusting.close()
	if _, err := untrusting.get().unary(context.Background(), healthCheckProcedure, nil, nil); err == nil {
		t.Error("a server whose certificate no trusted CA signed was answered")
	}
}
