package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
)

// This file holds the tests of a newcomer's first steps: `dalv serve --dev`
// and its kept secrets, `dalv version`, and the page at GET /.

// noSecrets is an environment without any secret or store, so that the
// development secrets of --dev, or none, are what a command finds.
func noSecrets() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"DALV_JWT_SECRET=", "DALV_BACKEND_KEYS=", "DALV_BACKEND_KEY=", "DALV_STORE="}
}

// startDev starts `dalv serve --dev` on data with no secrets in its
// environment, and stops it when the test ends.
func startDev(t testing.TB, data string, args ...string) *proc.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := proc.Start(ctx, proc.Options{Binary: binary, Data: data, Args: append([]string{"--dev"}, args...), Env: noSecrets()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-srv.Done():
			return
		default:
		}
		if err := srv.Stop(15 * time.Second); err != nil {
			t.Errorf("dalv serve --dev did not stop cleanly: %v\n%s", err, srv.Stderr())
		}
	})
	return srv
}

var exportLine = regexp.MustCompile(`(?m)^  export DALV_JWT_SECRET=(\S+)\n  export DALV_BACKEND_KEYS=(\S+) DALV_BACKEND_KEY=(\S+)\n`)

// devPrinted returns the secrets a `dalv serve --dev` printed as export
// lines.
func devPrinted(t testing.TB, srv *proc.Server) (secret, key string) {
	t.Helper()
	m := exportLine.FindStringSubmatch(srv.Stdout())
	if m == nil {
		t.Fatalf("dalv serve --dev printed no export lines:\n%s", srv.Stdout())
	}
	if m[2] != m[3] {
		t.Fatalf("DALV_BACKEND_KEYS=%s but DALV_BACKEND_KEY=%s", m[2], m[3])
	}
	return m[1], m[3]
}

// TestDevSecretsKept checks that `dalv serve --dev` keeps the secrets it
// generates in its data directory: a restart prints and uses the same
// ones, so a token minted before it still works after, and `dalv token`
// and the operator commands find them with --data and no environment.
func TestDevSecretsKept(t *testing.T) {
	t.Parallel()
	data := filepath.Join(t.TempDir(), "data")
	addr := cliFreeAddr(t)
	srv := startDev(t, data, "--addr", addr)
	secret, key := devPrinted(t, srv)
	path := filepath.Join(data, "dev-secrets.env")
	if !strings.Contains(srv.Stdout(), "kept in "+path) {
		t.Errorf("dalv serve --dev does not say where it keeps the secrets (%s):\n%s", path, srv.Stdout())
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Errorf("%s has mode %v, want %v", path, got, want)
	}

	// A second terminal: no secret in the environment, --data names the
	// server's directory.
	env := append(noSecrets(), "DALV_ADDR="+srv.URL())
	tok := strings.TrimSpace(cliOK(t, env, "token", "--data", data, "--user", "alice"))
	if got, want := cliOK(t, env, "put", "--data", data, "alice", "prefs/theme", "light"), "committed version 1\n"; got != want {
		t.Fatalf("put with --data printed %q, want %q", got, want)
	}
	device := dalvv1connect.NewClientServiceClient(http.DefaultClient, srv.URL(), bearer(tok))
	sync := func(base, batch uint64, font string) error {
		resp, err := device.Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone", BaseVersion: base, Batch: batch,
			Ops: []*dalvv1.Op{opPut("prefs/font", font)}}))
		if err != nil {
			return err
		}
		if got := resp.Msg.GetStatus(); got != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED {
			return fmt.Errorf("status %v", got)
		}
		return nil
	}
	if err := sync(1, 1, `"serif"`); err != nil {
		t.Fatalf("sync with the token of dalv token --data: %v", err)
	}

	// Restart with the same command: the same secrets, printed again; the
	// device's token still works.
	if err := srv.Stop(15 * time.Second); err != nil {
		t.Fatalf("stop: %v\n%s", err, srv.Stderr())
	}
	srv = startDev(t, data, "--addr", addr)
	if s2, k2 := devPrinted(t, srv); s2 != secret || k2 != key {
		t.Fatalf("after a restart dalv serve --dev printed other secrets: %s %s, want %s %s", s2, k2, secret, key)
	}
	if err := sync(2, 2, `"mono"`); err != nil {
		t.Fatalf("sync after a restart with a token minted before it: %v", err)
	}
	if got, want := fmt.Sprint(cliTable(t, cliOK(t, env, "get", "--data", data, "alice", "prefs/theme", "prefs/font"))), `[[prefs/theme 1 "light"] [prefs/font 3 "mono"]]`; got != want {
		t.Fatalf("get after the restart: %s, want %s", got, want)
	}
}

// TestDevSecretsEnvironmentWins checks that with --dev a secret set in the
// environment is used and not printed, and only the missing one comes from
// the kept file.
func TestDevSecretsEnvironmentWins(t *testing.T) {
	t.Parallel()
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := proc.Start(c, proc.Options{Binary: binary, Data: filepath.Join(t.TempDir(), "data"), Args: []string{"--dev"},
		Env: append(noSecrets(), "DALV_JWT_SECRET="+testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(15 * time.Second); err != nil {
			t.Errorf("stop: %v\n%s", err, srv.Stderr())
		}
	})
	out := srv.Stdout()
	if strings.Contains(out, "DALV_JWT_SECRET") || !strings.Contains(out, "export DALV_BACKEND_KEYS=") {
		t.Errorf("with DALV_JWT_SECRET set, serve --dev printed:\n%s\nwant the backend key's export line alone", out)
	}
	if _, err := deviceClient(t, srv, "alice").GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{})); err != nil {
		t.Fatalf("a token signed with the environment's DALV_JWT_SECRET: %v", err)
	}
}

// TestDevSecretsWithPostgres checks that `dalv serve --dev --store
// postgres://...` keeps its secrets in --data too, says so, and that a
// token `dalv token --data` mints from them works.
func TestDevSecretsWithPostgres(t *testing.T) {
	t.Parallel()
	_, u := pgtest.SchemaOn(t, pgtest.Server(t))
	data := filepath.Join(t.TempDir(), "data")
	srv := startDev(t, data, "--store", u)
	path := filepath.Join(data, "dev-secrets.env")
	if want := "kept in " + path + ", the --data directory, also with --store"; !strings.Contains(srv.Stdout(), want) {
		t.Errorf("dalv serve --dev --store does not say %q:\n%s", want, srv.Stdout())
	}
	secret, _ := devPrinted(t, srv)
	if b, err := os.ReadFile(path); err != nil || !strings.Contains(string(b), "DALV_JWT_SECRET="+secret+"\n") {
		t.Fatalf("%s does not hold the printed secret (%v):\n%s", path, err, b)
	}
	tok := strings.TrimSpace(cliOK(t, noSecrets(), "token", "--data", data, "--user", "pg-dev"))
	device := dalvv1connect.NewClientServiceClient(http.DefaultClient, srv.URL(), bearer(tok))
	if _, err := device.GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{})); err != nil {
		t.Fatalf("GetConfig with the token of dalv token --data: %v", err)
	}
}

// TestDevSecretsRefusals checks that `dalv serve --dev` on an address in
// use fails before it keeps or prints any secret, that serve without --dev
// never reads the kept ones, and that a command with no secret anywhere
// says how to give one.
func TestDevSecretsRefusals(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := filepath.Join(t.TempDir(), "data")
	r := cliFails(t, noSecrets(), "", []string{"serve", "--dev", "--addr", ln.Addr().String(), "--data", data}, "address already in use")
	if strings.Contains(r.stdout, "DALV_JWT_SECRET") || strings.Contains(r.stderr, "DALV_JWT_SECRET") {
		t.Errorf("serve --dev on an address in use printed secrets:\n%v", r)
	}
	if _, err := os.Stat(filepath.Join(data, "dev-secrets.env")); !os.IsNotExist(err) {
		t.Errorf("serve --dev on an address in use kept secrets (stat: %v)", err)
	}

	// Secrets kept by an earlier --dev run are for --dev only.
	srv := startDev(t, data)
	if err := srv.Stop(15 * time.Second); err != nil {
		t.Fatalf("stop: %v\n%s", err, srv.Stderr())
	}
	cliFails(t, noSecrets(), "", []string{"serve", "--addr", "127.0.0.1:0", "--data", data}, "missing secrets", "DALV_JWT_SECRET", "DALV_BACKEND_KEYS")

	// Nothing in the environment nor in --data: the error says how.
	empty := filepath.Join(t.TempDir(), "none")
	cliFails(t, noSecrets(), "", []string{"token", "--user", "alice", "--data", empty}, "DALV_JWT_SECRET is not set", filepath.Join(empty, "dev-secrets.env"), "--data DIR")
	cliFails(t, noSecrets(), "", []string{"list", "alice", "--data", empty}, "no backend API key", "--key", "DALV_BACKEND_KEY", "--data DIR")
}

// TestVersion checks that `dalv version` and `dalv --version` say which
// build this is: the module version, the commit or that the build has no
// VCS information, and the Go version.
func TestVersion(t *testing.T) {
	t.Parallel()
	env := noSecrets()
	out := cliOK(t, env, "version")
	if got := cliOK(t, env, "--version"); got != out {
		t.Errorf("dalv --version printed %q, dalv version %q", got, out)
	}
	want := regexp.MustCompile(`^dalv \S+, (commit [0-9a-f]{40}.*|commit unknown \(built without VCS information\)), ` + regexp.QuoteMeta(runtime.Version()) + "\n$")
	if !want.MatchString(out) {
		t.Fatalf("dalv version printed %q, want a match of %s", out, want)
	}
}

// TestIndexPage checks that GET / answers with a page naming the services
// and linking /healthz and /metrics, while other unknown paths stay 404.
func TestIndexPage(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	get := func(path string) (int, string, string) {
		t.Helper()
		resp, err := http.Get(srv.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	code, ctype, body := get("/")
	if code != http.StatusOK || !strings.HasPrefix(ctype, "text/html") {
		t.Fatalf("GET / = %d %s, want 200 text/html:\n%s", code, ctype, body)
	}
	for _, w := range []string{`<a href="/healthz">`, `<a href="/metrics">`, "/dalv.v1.ClientService/", "Sync", "/dalv.v1.BackendService/", "DeletePartition"} {
		if !strings.Contains(body, w) {
			t.Errorf("GET / does not say %q:\n%s", w, body)
		}
	}
	for _, p := range []string{"/nope", "/index.html", "/healthz/x"} {
		if code, _, body := get(p); code != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404:\n%s", p, code, body)
		}
	}
}
