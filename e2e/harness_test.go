package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
)

// Test secrets, passed to every server the tests start.
const (
	testSecret     = "e2e-test-secret-0123456789abcdef0123456789"
	testBackendKey = "e2e-backend-key-0123456789"
)

var binary string // the dalv binary TestMain built

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dalv-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = proc.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	pgtest.StopCitus()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testEnv is the environment every test server gets.
func testEnv() []string {
	return []string{"DALV_JWT_SECRET=" + testSecret, "DALV_BACKEND_KEYS=" + testBackendKey}
}

// startServer starts `dalv serve` on a fresh data directory with extra
// flags, and stops it (SIGTERM, expecting a clean exit) when the test ends.
func startServer(t testing.TB, args ...string) *proc.Server {
	t.Helper()
	return startServerOn(t, filepath.Join(t.TempDir(), "data"), args...)
}

// startServerOn is startServer on a given data directory.
func startServerOn(t testing.TB, data string, args ...string) *proc.Server {
	t.Helper()
	return startServerWith(t, proc.Options{Data: data, Args: args})
}

// startServerWith is startServer with options: a fresh data directory
// unless o names one, the test binary and environment.
func startServerWith(t testing.TB, o proc.Options) *proc.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if o.Data == "" {
		o.Data = filepath.Join(t.TempDir(), "data")
	}
	o.Binary, o.Env = binary, append(testEnv(), o.Env...)
	srv, err := proc.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-srv.Done():
			return // the test stopped or killed it
		default:
		}
		if err := srv.Stop(15 * time.Second); err != nil {
			t.Errorf("dalv serve did not stop cleanly: %v\n%s", err, srv.Stderr())
		}
	})
	return srv
}

// token mints a device token for user, valid for an hour.
func token(t testing.TB, user string) string {
	t.Helper()
	tok, err := auth.Mint([]byte(testSecret), user, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// bearer adds an Authorization header to every request of a client.
func bearer(tok string) connect.ClientOption {
	return connect.WithInterceptors(bearerToken("Bearer " + tok))
}

// bearerToken sets the Authorization header of unary and streaming calls.
type bearerToken string

func (b bearerToken) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", string(b))
		return next(ctx, req)
	}
}

func (b bearerToken) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", string(b))
		return conn
	}
}

func (b bearerToken) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// deviceClient is a Connect client for user's devices, speaking the Connect
// protocol with protobuf over HTTP/1.1.
func deviceClient(t testing.TB, srv *proc.Server, user string, opts ...connect.ClientOption) dalvv1connect.ClientServiceClient {
	t.Helper()
	return dalvv1connect.NewClientServiceClient(http.DefaultClient, srv.URL(), append([]connect.ClientOption{bearer(token(t, user))}, opts...)...)
}

// backendClient is a Connect client for a backend with the test API key.
func backendClient(t testing.TB, srv *proc.Server, opts ...connect.ClientOption) dalvv1connect.BackendServiceClient {
	t.Helper()
	return dalvv1connect.NewBackendServiceClient(http.DefaultClient, srv.URL(), append([]connect.ClientOption{bearer(testBackendKey)}, opts...)...)
}

// h2cClient is an HTTP client that speaks HTTP/2 without TLS, for gRPC.
func h2cClient() *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

// codeOf is the Connect code of err, or "ok".
func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}
