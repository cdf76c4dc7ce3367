package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/store/pebble"
	"github.com/dalvdb/dalv/value"
)

// These tests run a Server in the test process, on an embedded store in a
// temporary directory, behind httptest; the end-to-end tests in package e2e
// run `dalv serve` as a process.

var testSecret = []byte("server-test-secret-0123456789abcdef")

const testKey = "server-test-backend-key-0123"

// testServer starts a Server and returns it with its base URL and registry.
// Device tokens are checked with testSecret unless cfg has a Verifier.
func testServer(t *testing.T, cfg Config) (*Server, string, *prometheus.Registry) {
	t.Helper()
	base := testConfig(t)
	if cfg.Verifier == nil {
		cfg.Verifier = base.Verifier
	}
	cfg.Store, cfg.BackendKeys, cfg.Registry = base.Store, base.BackendKeys, base.Registry
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(s.Handler())
	hs.Config.Protocols = new(http.Protocols)
	hs.Config.Protocols.SetHTTP1(true)
	hs.Config.Protocols.SetUnencryptedHTTP2(true)
	hs.Start()
	t.Cleanup(hs.Close)
	return s, hs.URL, cfg.Registry
}

// testConfig returns the required fields of a Config: a Pebble store in a
// temp dir, a verifier of testSecret, testKey and a new registry.
func testConfig(t testing.TB) Config {
	t.Helper()
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
	return Config{Store: st, Verifier: v, BackendKeys: keys, Registry: prometheus.NewRegistry()}
}

// token mints a device token for user.
func token(t testing.TB, user string) string {
	t.Helper()
	tok, err := auth.Mint(testSecret, user, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// requests returns dalv_requests_total for procedure and code.
func requests(t *testing.T, reg *prometheus.Registry, procedure, code string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "dalv_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "procedure") == procedure && label(m, "code") == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue()
		}
	}
	return ""
}

// TestRequestsCounted checks that dalv_requests_total counts every request
// to a procedure once, with its code: those the handlers answer, those the
// token check refuses, and those Connect refuses before any handler runs (a
// body that does not decode, a content type it does not speak).
func TestRequestsCounted(t *testing.T) {
	t.Parallel()
	_, url, reg := testServer(t, Config{RateLimit: -1})
	sync := dalvv1connect.ClientServiceSyncProcedure
	client := dalvv1connect.NewClientServiceClient(http.DefaultClient, url)

	req := connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone"})
	req.Header().Set("Authorization", "Bearer "+token(t, "gina"))
	if _, err := client.Sync(context.Background(), req); err != nil {
		t.Fatalf("pull: %v", err)
	}
	if _, err := client.Sync(context.Background(), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone"})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("sync without a token: %v, want unauthenticated", err)
	}
	for _, tc := range []struct {
		name, contentType, body string
		status                  int
		code                    string
	}{
		{"a body that is not protobuf", "application/proto", "\xff\xff\xff", http.StatusBadRequest, "invalid_argument"},
		{"a body that is not JSON", "application/json", "{not json", http.StatusBadRequest, "invalid_argument"},
		{"a content type Connect does not speak", "text/plain", "hello", http.StatusUnsupportedMediaType, "unknown"},
		{"a procedure the service does not have", "application/json", "{}", http.StatusNotFound, "unimplemented"},
	} {
		path := sync
		if tc.status == http.StatusNotFound {
			path = "/dalv.v1.ClientService/Bogus"
		}
		hreq, err := http.NewRequest(http.MethodPost, url+path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		// Authenticated, so that Connect, not the token check, answers.
		hreq.Header.Set("Content-Type", tc.contentType)
		hreq.Header.Set("Authorization", "Bearer "+token(t, "gina"))
		hr, err := http.DefaultClient.Do(hreq)
		if err != nil {
			t.Fatal(err)
		}
		hr.Body.Close()
		if hr.StatusCode != tc.status {
			t.Errorf("%s: HTTP %d, want %d", tc.name, hr.StatusCode, tc.status)
		}
	}
	for code, want := range map[string]float64{"ok": 1, "unauthenticated": 1, "invalid_argument": 2, "unknown": 1} {
		if got := requests(t, reg, sync, code); got != want {
			t.Errorf("dalv_requests_total{procedure=%q,code=%q} = %v, want %v", sync, code, got, want)
		}
	}
	// A path the client made up is not a label value.
	if got := requests(t, reg, "unknown", "unimplemented"); got != 1 {
		t.Errorf(`dalv_requests_total{procedure="unknown",code="unimplemented"} = %v, want 1`, got)
	}
}

// TestRefusalCode checks the code read from a refusal of each protocol.
func TestRefusalCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		header string // grpc-status
		status int
		body   string
		want   string
	}{
		{"gRPC, invalid argument", "3", http.StatusOK, "", "invalid_argument"},
		{"gRPC, ok", "0", http.StatusOK, "", "ok"},
		{"gRPC, out of range", "99", http.StatusOK, "", "unknown"},
		{"Connect, error body", "", http.StatusBadRequest, `{"code":"invalid_argument","message":"x"}`, "invalid_argument"},
		{"Connect, no body, 400", "", http.StatusBadRequest, "", "internal"},
		{"Connect, no body, 404", "", http.StatusNotFound, "", "unimplemented"},
		{"Connect, no body, 503", "", http.StatusServiceUnavailable, "", "unavailable"},
		{"Connect, no body, 415", "", http.StatusUnsupportedMediaType, "", "unknown"},
	} {
		rec := &refusalRecorder{ResponseWriter: httptest.NewRecorder()}
		if tc.header != "" {
			rec.Header().Set("Grpc-Status", tc.header)
		}
		rec.WriteHeader(tc.status)
		_, _ = rec.Write([]byte(tc.body))
		if got := rec.code(); got != tc.want {
			t.Errorf("%s: code %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestToConnect checks that domain errors take the code of codeTable, that
// a Connect error keeps its own, and that anything else is internal with a
// message that leaks nothing of the error.
func TestToConnect(t *testing.T) {
	t.Parallel()
	s, _, _ := testServer(t, Config{})
	for _, tc := range []struct {
		err  error
		want connect.Code
	}{
		{engine.Errorf(engine.ErrInvalid, "bad key"), connect.CodeInvalidArgument},
		{fmt.Errorf("op 0: %w", value.Errorf(value.ErrLimit, "too big")), connect.CodeResourceExhausted},
		{engine.Errorf(engine.ErrStale, "behind"), connect.CodeFailedPrecondition},
		{fmt.Errorf("wrapped: %w", store.ErrUnavailable), connect.CodeUnavailable},
		{fmt.Errorf("wrapped: %w", store.ErrCorruption), connect.CodeDataLoss},
		{auth.ErrExpired, connect.CodeUnauthenticated},
		{context.DeadlineExceeded, connect.CodeDeadlineExceeded},
		{connect.NewError(connect.CodeAborted, errors.New("as it was")), connect.CodeAborted},
		{errors.New("disk on fire at /secret/path"), connect.CodeInternal},
	} {
		err := s.toConnect("/test", tc.err)
		if got := connect.CodeOf(err); got != tc.want {
			t.Errorf("toConnect(%v) = %v, want %v", tc.err, got, tc.want)
		}
		if tc.want == connect.CodeInternal && strings.Contains(err.Error(), "secret") {
			t.Errorf("an internal error's message %q shows the error", err)
		}
	}
	if err := s.toConnect("/test", nil); err != nil {
		t.Errorf("toConnect(nil) = %v", err)
	}
}

// TestPartitions checks which partition a device and a backend name: a
// device its own, or a shared one its token's claims open; a backend
// exactly one of a valid user or a configured shared partition.
func TestPartitions(t *testing.T) {
	t.Parallel()
	s, _, _ := testServer(t, Config{Shared: []SharedPartition{{Name: "catalog"}, {Name: "beta", Claim: "tier", Value: "beta"}}})
	plain := &auth.Claims{Subject: "hana", Raw: map[string]any{"sub": "hana"}}
	beta := &auth.Claims{Subject: "ivan", Raw: map[string]any{"sub": "ivan", "tier": []any{"gold", "beta"}}}
	for _, tc := range []struct {
		c      *auth.Claims
		shared string
		want   store.Partition
		code   connect.Code // 0: no error
	}{
		{plain, "", store.Partition{Name: "hana"}, 0},
		{plain, "catalog", store.Partition{Shared: true, Name: "catalog"}, 0},
		{plain, "beta", store.Partition{}, connect.CodePermissionDenied},
		{beta, "beta", store.Partition{Shared: true, Name: "beta"}, 0},
		{plain, "nope", store.Partition{}, connect.CodeNotFound},
	} {
		p, err := s.devicePartition(tc.c, tc.shared)
		if code := codeOrZero(s, err); code != tc.code || p != tc.want {
			t.Errorf("device %s, shared %q: %v, %v; want %v, code %v", tc.c.Subject, tc.shared, p, err, tc.want, tc.code)
		}
	}
	if got := s.readableShared(plain); !slices.Equal(got, []string{"catalog"}) {
		t.Errorf("shared partitions hana may read: %v, want [catalog]", got)
	}
	if got := s.readableShared(beta); !slices.Equal(got, []string{"beta", "catalog"}) {
		t.Errorf("shared partitions ivan may read: %v, want [beta catalog]", got)
	}
	for _, tc := range []struct {
		user, shared string
		want         store.Partition
		code         connect.Code
	}{
		{"hana", "", store.Partition{Name: "hana"}, 0},
		{"", "beta", store.Partition{Shared: true, Name: "beta"}, 0},
		{"hana", "beta", store.Partition{}, connect.CodeInvalidArgument},
		{"", "", store.Partition{}, connect.CodeInvalidArgument},
		{"", "nope", store.Partition{}, connect.CodeNotFound},
		{"bad\xffuser", "", store.Partition{}, connect.CodeInvalidArgument}, // not UTF-8
	} {
		p, err := s.backendPartition(tc.user, tc.shared)
		if code := codeOrZero(s, err); code != tc.code || p != tc.want {
			t.Errorf("backend user %q, shared %q: %v, %v; want %v, code %v", tc.user, tc.shared, p, err, tc.want, tc.code)
		}
	}
}

// codeOrZero is err's Connect code as the server answers it, or 0 for nil.
func codeOrZero(s *Server, err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(s.toConnect("/test", err))
}

// TestNewRefusesNegativeConfig checks that New refuses a negative size,
// count or duration with an error naming the field and its flag, instead of
// silently taking the default, and still takes zero as the default.
func TestNewRefusesNegativeConfig(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	base := func() Config {
		c := cfg
		c.Registry = prometheus.NewRegistry()
		return c
	}
	for _, tc := range []struct {
		set  func(*Config)
		want []string
	}{
		{func(c *Config) { c.MaxRequestBytes = -8 }, []string{"MaxRequestBytes", "--max-request-bytes", "-8"}},
		{func(c *Config) { c.BodyTimeout = -time.Second }, []string{"BodyTimeout", "--body-timeout", "-1s"}},
		{func(c *Config) { c.MaxConnections = -1 }, []string{"MaxConnections", "open-file limit"}},
		{func(c *Config) { c.RateBurst = -3 }, []string{"RateBurst", "--rate-burst", "-3"}},
		{func(c *Config) { c.Retention = -time.Hour }, []string{"Retention", "--retention"}},
		{func(c *Config) { c.WatchBuffer = -1 }, []string{"WatchBuffer", "--watch-buffer"}},
		{func(c *Config) { c.Heartbeat = -time.Second }, []string{"Heartbeat", "--heartbeat"}},
		{func(c *Config) { c.DrainTimeout = -time.Second }, []string{"DrainTimeout", "--drain-timeout"}},
		{func(c *Config) { c.Limits.MaxOps = -1 }, []string{"MaxOps", "--max-ops"}},
		{func(c *Config) { c.Limits.MaxResponseBytes = 10 }, []string{"--max-response-bytes", "10"}},
	} {
		cfg := base()
		tc.set(&cfg)
		_, err := New(cfg)
		if err == nil {
			t.Errorf("New accepted %v", tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not name %q", err, w)
			}
		}
	}
	if _, err := New(base()); err != nil {
		t.Errorf("New refused the zero (default) configuration: %v", err)
	}
}

// panickyStore is a store whose View panics, as a bug in a read would.
type panickyStore struct{ store.Store }

func (panickyStore) View(context.Context, store.Partition, func(store.Reader) error) error {
	panic("a bug in a read")
}

// TestHandlerPanics checks that a call whose handler panics is answered
// internal, with a message that says nothing of the panic, and that the
// panic is logged at error level with the procedure; the server answers
// the next call.
func TestHandlerPanics(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	cfg.Store = panickyStore{cfg.Store}
	var logged strings.Builder
	var mu sync.Mutex
	cfg.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logged}, &slog.HandlerOptions{Level: slog.LevelError}))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	backend := dalvv1connect.NewBackendServiceClient(hs.Client(), hs.URL)
	for range 2 {
		req := connect.NewRequest(&dalvv1.GetRequest{User: "u", Keys: []string{"k"}})
		req.Header().Set("Authorization", "Bearer "+testKey)
		_, err := backend.Get(context.Background(), req)
		if connect.CodeOf(err) != connect.CodeInternal || strings.Contains(err.Error(), "bug") {
			t.Errorf("a Get whose read panics: %v, want internal saying nothing of the panic", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if got := logged.String(); strings.Count(got, "level=ERROR") != 2 || !strings.Contains(got, "a bug in a read") ||
		!strings.Contains(got, dalvv1connect.BackendServiceGetProcedure) || !strings.Contains(got, "panickyStore") {
		t.Errorf("the panics logged:\n%s\nwant two errors naming the procedure, the panic and its stack", got)
	}
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
