package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/client"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/value"
)

// Test secrets, passed to every server the tests start.
const (
	testSecret     = "client-test-secret-0123456789abcdef012345"
	testBackendKey = "client-backend-key-0123456789"
)

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(runChild(role))
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// dalvBinary builds ./cmd/dalv once per test binary, on first need.
func dalvBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "dalv-client-bin")
		if buildErr == nil {
			binPath, buildErr = proc.Build(binDir)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// server is a `dalv serve` process that can be stopped and started again
// on the same data directory.
type server struct {
	t    testing.TB
	data string
	args []string

	mu  sync.Mutex
	cur *proc.Server
}

// startServer starts `dalv serve` with extra flags on a fresh data
// directory; it stops when the test ends.
func startServer(t testing.TB, args ...string) *server {
	t.Helper()
	s := &server{t: t, data: filepath.Join(t.TempDir(), "data"), args: append([]string{"--heartbeat", "200ms"}, args...)}
	s.start()
	t.Cleanup(func() { s.stop() })
	return s
}

func (s *server) start() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := proc.Start(ctx, proc.Options{Binary: dalvBinary(s.t), Data: s.data, Args: s.args,
		Env: []string{"DALV_JWT_SECRET=" + testSecret, "DALV_BACKEND_KEYS=" + testBackendKey}})
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.cur = p
	s.mu.Unlock()
}

// kill SIGKILLs the server.
func (s *server) kill() {
	s.mu.Lock()
	p := s.cur
	s.cur = nil
	s.mu.Unlock()
	if p != nil {
		_ = p.Kill()
	}
}

// stop stops the server (SIGTERM, then SIGKILL after a while).
func (s *server) stop() {
	s.mu.Lock()
	p := s.cur
	s.cur = nil
	s.mu.Unlock()
	if p == nil {
		return
	}
	select {
	case <-p.Done():
		return
	default:
	}
	t0 := time.Now()
	defer func() {
		if el := time.Since(t0); el > time.Second {
			s.t.Logf("server stop took %v:\n%s", el, p.Stderr())
		}
	}()
	if err := p.Stop(15 * time.Second); err != nil {
		s.t.Errorf("dalv serve did not stop cleanly: %v\n%s", err, p.Stderr())
	}
}

// addr is where the server listens now; empty while stopped.
func (s *server) addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return ""
	}
	return s.cur.Addr
}

func (s *server) url() string { return "http://" + s.addr() }

// backend is a backend client of the running server.
func (s *server) backend() dalvv1connect.BackendServiceClient {
	return dalvv1connect.NewBackendServiceClient(http.DefaultClient, s.url(), connect.WithInterceptors(bearer(testBackendKey)))
}

func bearer(tok string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+tok)
			return next(ctx, req)
		}
	}
}

// commit writes ops to user's partition as a backend.
func (s *server) commit(t testing.TB, user string, ops ...*dalvv1.Op) uint64 {
	t.Helper()
	resp, err := s.backend().Commit(context.Background(), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: ops}))
	if err != nil {
		t.Fatalf("backend commit: %v", err)
	}
	return resp.Msg.GetVersion()
}

// state reads user's whole partition as a backend: key -> value, and the
// version.
func (s *server) state(t testing.TB, user string) (map[string]*dalvv1.Value, uint64) {
	t.Helper()
	out := make(map[string]*dalvv1.Value)
	var version uint64
	tokn := ""
	for {
		resp, err := s.backend().List(context.Background(), connect.NewRequest(&dalvv1.ListRequest{User: user, PageToken: tokn, PageSize: 1000}))
		if err != nil {
			t.Fatalf("backend list: %v", err)
		}
		for _, it := range resp.Msg.GetItems() {
			out[it.GetKey()] = it.GetValue()
		}
		version = resp.Msg.GetVersion()
		if tokn = resp.Msg.GetNextPageToken(); tokn == "" {
			return out, version
		}
	}
}

// tokens is a TokenSource minting fresh tokens for user.
func tokens(user string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		return auth.Mint([]byte(testSecret), user, time.Hour, time.Now())
	}
}

// netSwitch is a device's network: it sends requests to the server's
// current address (which changes when the server restarts), and can be cut
// (every request fails and those in flight are cancelled) and restored.
// blockSync fails only Sync requests, so a watch stays open while syncing
// cannot happen.
type netSwitch struct {
	srv *server
	tr  *http.Transport

	mu        sync.Mutex
	down      bool
	blockSync bool
	loseSync  bool // Sync requests reach the server; their answers are lost
	inflight  map[int]context.CancelFunc
	next      int
}

func newNet(srv *server) *netSwitch {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &netSwitch{srv: srv, tr: tr, inflight: make(map[int]context.CancelFunc)}
}

func (n *netSwitch) client() *http.Client { return &http.Client{Transport: n} }

func (n *netSwitch) RoundTrip(req *http.Request) (*http.Response, error) {
	n.mu.Lock()
	if n.down {
		n.mu.Unlock()
		return nil, errors.New("test network is down")
	}
	if n.blockSync && strings.HasSuffix(req.URL.Path, "/Sync") {
		n.mu.Unlock()
		return nil, errors.New("test network blocks Sync")
	}
	addr := n.srv.addr()
	if addr == "" {
		n.mu.Unlock()
		return nil, errors.New("test server is stopped")
	}
	ctx, cancel := context.WithCancel(req.Context())
	id := n.next
	n.next++
	n.inflight[id] = cancel
	n.mu.Unlock()
	req = req.Clone(ctx)
	req.URL.Host = addr
	req.Host = addr
	resp, err := n.tr.RoundTrip(req)
	if err != nil {
		n.done(id)
		return nil, err
	}
	n.mu.Lock()
	lose := n.loseSync && strings.HasSuffix(req.URL.Path, "/Sync")
	n.mu.Unlock()
	if lose {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		n.done(id)
		return nil, errors.New("test network lost the answer")
	}
	resp.Body = &trackedBody{ReadCloser: resp.Body, done: func() { n.done(id) }}
	return resp, nil
}

func (n *netSwitch) done(id int) {
	n.mu.Lock()
	if c, ok := n.inflight[id]; ok {
		c()
		delete(n.inflight, id)
	}
	n.mu.Unlock()
}

// set cuts (down) or restores the network.
func (n *netSwitch) set(down bool) {
	n.mu.Lock()
	n.down = down
	if down {
		for id, c := range n.inflight {
			c()
			delete(n.inflight, id)
		}
	}
	n.mu.Unlock()
	if down {
		n.tr.CloseIdleConnections()
	}
}

// CloseIdleConnections closes the idle connections of the transport, as
// Replica.Close asks of it: a connection dialled for a request that was
// cancelled would otherwise hold up the server's graceful stop.
func (n *netSwitch) CloseIdleConnections() { n.tr.CloseIdleConnections() }

func (n *netSwitch) setLoseSync(b bool) {
	n.mu.Lock()
	n.loseSync = b
	n.mu.Unlock()
}

func (n *netSwitch) setBlockSync(b bool) {
	n.mu.Lock()
	n.blockSync = b
	n.mu.Unlock()
}

type trackedBody struct {
	io.ReadCloser
	done func()
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

// openReplica opens a replica in the test's temp dir; it is closed and
// checked for consistency when the test ends.
func openReplica(t testing.TB, name string, o client.Options) *client.Replica {
	t.Helper()
	r, err := client.Open(filepath.Join(t.TempDir(), name), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeChecked(t, r) })
	return r
}

func closeChecked(t testing.TB, r *client.Replica) {
	t.Helper()

	if err := r.Check(); err != nil {
		t.Errorf("replica %s inconsistent: %v", r.Path(), err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

// device opens a replica of user against srv over its own switchable
// network.
func device(t testing.TB, srv *server, name, user string, o client.Options) (*client.Replica, *netSwitch) {
	t.Helper()
	n := newNet(srv)
	o.ServerURL = "http://dalv.test"
	o.HTTPClient = n.client()
	if o.TokenSource == nil {
		o.TokenSource = tokens(user)
	}
	if o.RetryMin == 0 {
		o.RetryMin, o.RetryMax = 20*time.Millisecond, 200*time.Millisecond
	}
	return openReplica(t, name, o), n
}

// localState is everything a replica shows of the user's partition.
func localState(t testing.TB, r *client.Replica) map[string]*dalvv1.Value {
	t.Helper()
	items, err := r.List("")
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]*dalvv1.Value, len(items))
	for _, it := range items {
		m[it.Key] = it.Value
	}
	return m
}

// diffStates describes how two states differ, or is empty.
func diffStates(a, b map[string]*dalvv1.Value) string {
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		if !equalOpt(a[k], b[k]) {
			out = append(out, fmt.Sprintf("%s: %s vs %s", k, show(a[k]), show(b[k])))
		}
	}
	return strings.Join(out, "; ")
}

func equalOpt(a, b *dalvv1.Value) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return proto.Equal(a, b)
}

// show renders a value for messages.
func show(v *dalvv1.Value) string {
	switch {
	case v == nil:
		return "<absent>"
	case value.IsList(v):
		var items []string
		for _, it := range v.GetList().GetItems() {
			items = append(items, string(it))
		}
		return "[" + strings.Join(items, ",") + "]"
	}
	return fmt.Sprintf("%q", v.GetScalar())
}

func put(key, v string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: value.Scalar([]byte(v))}
}

func del(key string) *dalvv1.Op { return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: key} }

func listAdd(key, elem string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: key, Value: value.Scalar([]byte(elem))}
}

func scalar(s string) *dalvv1.Value { return value.Scalar([]byte(s)) }

func mustSync(t testing.TB, r *client.Replica) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Sync(ctx); err != nil {
		t.Fatalf("sync %s: %v", r.Path(), err)
	}
}

func getString(t testing.TB, r *client.Replica, key string) string {
	t.Helper()
	v, err := r.Get(key)
	if errors.Is(err, client.ErrNotFound) {
		return "<absent>"
	}
	if err != nil {
		t.Fatal(err)
	}
	return show(v)
}

func mustToken(t testing.TB, user string) string {
	t.Helper()
	tok, err := tokens(user)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }
