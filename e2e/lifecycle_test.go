package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/auth"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/value"
)

// lifeQuick bounds how long a dalv command that must fail may take: it
// should fail at once, not after some timeout of its own.
const lifeQuick = 10 * time.Second

// lifeResult is how one run of the dalv binary ended.
type lifeResult struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r lifeResult) String() string {
	return fmt.Sprintf("exit %d after %v\nstdout:\n%sstderr:\n%s", r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// lifeEnv is a clean environment, only PATH and HOME, plus extra.
func lifeEnv(extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, extra...)
}

// lifeRun runs the dalv binary with exactly env and waits up to 30s for it
// to exit.
func lifeRun(t *testing.T, env []string, args ...string) lifeResult {
	t.Helper()
	return lifeRunFor(t, 30*time.Second, env, args...)
}

func lifeRunFor(t *testing.T, timeout time.Duration, env []string, args ...string) lifeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := lifeResult{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("dalv %s did not exit within %v (killed):\n%v", strings.Join(args, " "), timeout, r)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run dalv %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// lifeMustFail runs dalv, which must exit non-zero quickly, without ever
// listening, and say everything in want on stderr.
func lifeMustFail(t *testing.T, env []string, args []string, want ...string) lifeResult {
	t.Helper()
	r := lifeRunFor(t, lifeQuick, env, args...)
	if r.code == 0 {
		t.Fatalf("dalv %s exited 0, want a failure:\n%v", strings.Join(args, " "), r)
	}
	if strings.Contains(r.stdout, "listening") {
		t.Errorf("dalv %s listened before failing:\n%v", strings.Join(args, " "), r)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("dalv %s: stderr does not mention %q:\n%v", strings.Join(args, " "), w, r)
		}
	}
	return r
}

// lifeCommit writes key=val to user's partition through the backend API.
func lifeCommit(ctx context.Context, bc dalvv1connect.BackendServiceClient, user, key, val string) (uint64, error) {
	resp, err := bc.Commit(ctx, connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: []*dalvv1.Op{
		{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: value.Scalar([]byte(val))},
	}}))
	if err != nil {
		return 0, err
	}
	return resp.Msg.GetVersion(), nil
}

// lifeGet reads keys of user's partition, in chunks the server accepts.
func lifeGet(ctx context.Context, t *testing.T, bc dalvv1connect.BackendServiceClient, user string, keys []string) (uint64, map[string]string) {
	t.Helper()
	got := map[string]string{}
	var version uint64
	for i := 0; i == 0 || i < len(keys); i += 1000 {
		resp, err := bc.Get(ctx, connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: keys[i:min(i+1000, len(keys))]}))
		if err != nil {
			t.Fatalf("Get %s: %v", user, err)
		}
		version = resp.Msg.GetVersion()
		for _, c := range resp.Msg.GetItems() {
			got[c.GetKey()] = string(c.GetValue().GetScalar())
		}
	}
	return version, got
}

// (a) A data directory held by a running server cannot be opened by another.
func TestLifecycleDataDirInUse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	data := filepath.Join(t.TempDir(), "data")
	srv := startServerOn(t, data)
	bc := backendClient(t, srv)
	if _, err := lifeCommit(ctx, bc, "life-a", "k", "before"); err != nil {
		t.Fatal(err)
	}

	lifeMustFail(t, lifeEnv(testEnv()...), []string{"serve", "--addr", "127.0.0.1:0", "--data", data}, data, "in use")

	// The first server still serves, with its data.
	if _, got := lifeGet(ctx, t, bc, "life-a", []string{"k"}); got["k"] != "before" {
		t.Fatalf("after the refused second server, k = %q, want %q", got["k"], "before")
	}
	if _, err := lifeCommit(ctx, bc, "life-a", "k", "after"); err != nil {
		t.Fatalf("commit after the refused second server: %v", err)
	}
	// And once it stops, the directory is free again.
	if err := srv.Stop(15 * time.Second); err != nil {
		t.Fatalf("stop: %v\n%s", err, srv.Stderr())
	}
	srv = startServerOn(t, data)
	if _, got := lifeGet(ctx, t, backendClient(t, srv), "life-a", []string{"k"}); got["k"] != "after" {
		t.Fatalf("after a restart, k = %q, want %q", got["k"], "after")
	}
}

// (b) Without its secrets, serve refuses to start and says what to set.
func TestLifecycleMissingSecrets(t *testing.T) {
	t.Parallel()
	const (
		jwt  = "DALV_JWT_SECRET=" + testSecret
		keys = "DALV_BACKEND_KEYS=" + testBackendKey
	)
	for _, tc := range []struct {
		name    string
		env     []string
		want    []string
		notWant string
	}{
		{"neither", nil, []string{"DALV_JWT_SECRET", "DALV_BACKEND_KEYS", "environment", "--dev"}, ""},
		{"no backend keys", []string{jwt}, []string{"DALV_BACKEND_KEYS", "--dev"}, "DALV_JWT_SECRET"},
		{"no jwt secret", []string{keys}, []string{"DALV_JWT_SECRET", "--dev"}, "DALV_BACKEND_KEYS"},
		{"blank backend keys", []string{jwt, "DALV_BACKEND_KEYS= , "}, []string{"DALV_BACKEND_KEYS"}, "DALV_JWT_SECRET"},
		{"short jwt secret", []string{"DALV_JWT_SECRET=short", keys}, []string{"DALV_JWT_SECRET", "32"}, "DALV_BACKEND_KEYS"},
		{"short backend key", []string{jwt, "DALV_BACKEND_KEYS=short"}, []string{"DALV_BACKEND_KEYS", "16"}, "DALV_JWT_SECRET"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			r := lifeMustFail(t, lifeEnv(tc.env...), []string{"serve", "--addr", "127.0.0.1:0", "--data", data}, tc.want...)
			if tc.notWant != "" && strings.Contains(r.stderr, tc.notWant) {
				t.Errorf("the message names %s, which is set:\n%v", tc.notWant, r)
			}
			if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a server that refused to start left %s behind (stat: %v)", data, err)
			}
		})
	}
}

// (c) serve --dev generates the secrets, prints them once, and they work.
func TestLifecycleDevSecrets(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Empty values override whatever the test's own environment holds.
	srv, err := proc.Start(ctx, proc.Options{
		Binary: binary,
		Data:   filepath.Join(t.TempDir(), "data"),
		Args:   []string{"--dev"},
		Env:    []string{"DALV_JWT_SECRET=", "DALV_BACKEND_KEYS=", "DALV_BACKEND_KEY="},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(15 * time.Second); err != nil {
			t.Errorf("stop: %v\n%s", err, srv.Stderr())
		}
	})

	out := srv.Stdout()
	var secret, key string
	for _, line := range strings.Split(out, "\n") {
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "DALV_JWT_SECRET="); ok {
				secret = v
			}
			if v, ok := strings.CutPrefix(f, "DALV_BACKEND_KEYS="); ok {
				key = v
			}
		}
	}
	for _, name := range []string{"export DALV_JWT_SECRET=", "DALV_BACKEND_KEYS="} {
		if n := strings.Count(out, name); n != 1 {
			t.Errorf("stdout has %q %d times, want once:\n%s", name, n, out)
		}
	}
	if len(secret) < auth.MinSecretBytes || len(key) < auth.MinAPIKeyBytes {
		t.Fatalf("printed secret %q and backend key %q, want at least %d and %d bytes:\n%s", secret, key, auth.MinSecretBytes, auth.MinAPIKeyBytes, out)
	}
	if log := srv.Stderr(); strings.Contains(log, secret) || strings.Contains(log, key) {
		t.Errorf("the log repeats a generated secret:\n%s", log)
	}

	// A token minted with the printed secret works against the server.
	r := lifeRun(t, lifeEnv("DALV_JWT_SECRET="+secret), "token", "--user", "alice")
	if r.code != 0 {
		t.Fatalf("dalv token with the printed secret: %v", r)
	}
	tok := strings.TrimSpace(r.stdout)
	dc := dalvv1connect.NewClientServiceClient(http.DefaultClient, srv.URL(), bearer(tok))
	cfg, err := dc.GetConfig(ctx, connect.NewRequest(&dalvv1.GetConfigRequest{}))
	if err != nil {
		t.Fatalf("GetConfig with the minted token: %v", err)
	}
	if got, want := cfg.Msg.GetUser(), "alice"; got != want {
		t.Fatalf("GetConfig user = %q, want %q", got, want)
	}
	sr, err := dc.Sync(ctx, connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone", Batch: 1, Ops: []*dalvv1.Op{
		{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: "prefs/theme", Value: value.Scalar([]byte("dark"))},
	}}))
	if err != nil || sr.Msg.GetStatus() != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED {
		t.Fatalf("Sync with the minted token: %v, %v", sr.Msg.GetStatus(), err)
	}

	// So does the printed backend key; the test's fixed secrets do not.
	bc := dalvv1connect.NewBackendServiceClient(http.DefaultClient, srv.URL(), bearer(key))
	if _, got := lifeGet(ctx, t, bc, "alice", []string{"prefs/theme"}); got["prefs/theme"] != "dark" {
		t.Fatalf("backend Get with the printed key: prefs/theme = %q, want %q", got["prefs/theme"], "dark")
	}
	_, err = backendClient(t, srv).Get(ctx, connect.NewRequest(&dalvv1.GetRequest{User: "alice", Keys: []string{"prefs/theme"}}))
	if got, want := codeOf(err), "unauthenticated"; got != want {
		t.Errorf("backend Get with a key the server never had: %s, want %s", got, want)
	}
	_, err = deviceClient(t, srv, "alice").GetConfig(ctx, connect.NewRequest(&dalvv1.GetConfigRequest{}))
	if got, want := codeOf(err), "unauthenticated"; got != want {
		t.Errorf("GetConfig with a token signed by another secret: %s, want %s", got, want)
	}
}

// (d) dalv token needs its secret and a user, and honours --ttl.
func TestLifecycleToken(t *testing.T) {
	t.Parallel()
	secret := "DALV_JWT_SECRET=" + testSecret
	t.Run("no secret", func(t *testing.T) {
		lifeMustFail(t, lifeEnv(), []string{"token", "--user", "alice"}, "DALV_JWT_SECRET")
	})
	t.Run("no user", func(t *testing.T) {
		lifeMustFail(t, lifeEnv(secret), []string{"token"}, "--user")
	})
	for _, ttl := range []string{"0s", "-5m"} {
		t.Run("ttl "+ttl, func(t *testing.T) {
			lifeMustFail(t, lifeEnv(secret), []string{"token", "--user", "alice", "--ttl", ttl}, "--ttl")
		})
	}
	t.Run("ttl 90m", func(t *testing.T) {
		before := time.Now().Unix()
		r := lifeRun(t, lifeEnv(secret), "token", "--user", "bob", "--ttl", "90m")
		after := time.Now().Unix()
		if r.code != 0 {
			t.Fatalf("dalv token: %v", r)
		}
		tok := strings.TrimSpace(r.stdout)
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("token %q is not a JWT", tok)
		}
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			t.Fatalf("token payload: %v", err)
		}
		var claims struct {
			Sub      string `json:"sub"`
			Iat, Exp int64
		}
		if err := json.Unmarshal(payload, &claims); err != nil {
			t.Fatalf("token payload %s: %v", payload, err)
		}
		if got, want := claims.Exp-claims.Iat, int64(90*60); got != want {
			t.Errorf("exp - iat = %ds, want %ds", got, want)
		}
		if claims.Exp < before+90*60 || claims.Exp > after+90*60 {
			t.Errorf("exp = %d, want between %d and %d (now + 90m)", claims.Exp, before+90*60, after+90*60)
		}
		v, err := auth.NewHS256([]byte(testSecret), auth.HS256Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(context.Background(), tok)
		if err != nil {
			t.Fatalf("the token does not verify with the secret: %v", err)
		}
		if c.Subject != "bob" || c.ExpiresAt.Unix() != claims.Exp {
			t.Errorf("verified claims: sub %q exp %v, want bob and %d", c.Subject, c.ExpiresAt, claims.Exp)
		}
	})
}

// (e) SIGTERM lets requests in flight finish, refuses new connections,
// exits 0 and keeps every acknowledged write.
func TestLifecycleGracefulStop(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const user = "life-e"
	data := filepath.Join(t.TempDir(), "data")
	srv := startServerOn(t, data, "--rate-limit", "-1")

	// A fresh connection per request: a connection the server accepted is
	// served to the end, and one it did not is refused or reset before
	// anything runs. (Reused keep-alive connections race with the server
	// closing idle ones in ways no server can prevent.)
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	// One request is held in flight for certain: its headers are sent with
	// "Expect: 100-continue", the handler asks for the body, and the body
	// comes only after the server has begun to drain.
	slowKey := "slow/after-sigterm"
	body := fmt.Sprintf(`{"user":%q,"ops":[{"kind":"OP_KIND_PUT","key":%q,"value":{"scalar":%q}}]}`,
		user, slowKey, base64.StdEncoding.EncodeToString([]byte("in flight")))
	pr, pw := io.Pipe()
	req, err := http.NewRequest(http.MethodPost, srv.URL()+"/dalv.v1.BackendService/Commit", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+testBackendKey)
	req.Header.Set("Expect", "100-continue")
	got100 := make(chan struct{})
	req = req.WithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got100Continue: func() { close(got100) }}))
	type answer struct {
		code int
		body string
		err  error
	}
	slow := make(chan answer, 1)
	go func() {
		c := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}
		resp, err := c.Do(req)
		if err != nil {
			slow <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		slow <- answer{code: resp.StatusCode, body: string(b), err: err}
	}()

	// Meanwhile devices and backends write, one unique key per request.
	type write struct {
		key     string
		version uint64 // of the answer
		err     error
	}
	var (
		mu      gosync.Mutex
		writes  []write
		nAcked  atomic.Int64
		enough  = make(chan struct{})
		workers gosync.WaitGroup
	)
	record := func(w write) bool {
		mu.Lock()
		writes = append(writes, w)
		mu.Unlock()
		if w.err == nil && nAcked.Add(1) == 50 {
			close(enough)
		}
		return w.err == nil
	}
	for i := range 3 {
		dc := dalvv1connect.NewClientServiceClient(hc, srv.URL(), bearer(token(t, user)))
		workers.Go(func() {
			var base uint64
			for n := uint64(1); ; n++ {
				key := fmt.Sprintf("dev/%d/%d", i, n)
				resp, err := dc.Sync(ctx, connect.NewRequest(&dalvv1.SyncRequest{DeviceId: fmt.Sprint("device-", i), BaseVersion: base, Batch: n, Ops: []*dalvv1.Op{
					{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: value.Scalar([]byte(key))},
				}}))
				w := write{key: key, err: err}
				if err == nil {
					if resp.Msg.GetStatus() != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED {
						w.err = fmt.Errorf("status %v", resp.Msg.GetStatus())
					}
					w.version, base = resp.Msg.GetVersion(), resp.Msg.GetVersion()
				}
				if !record(w) {
					return
				}
			}
		})
	}
	for i := range 2 {
		bc := dalvv1connect.NewBackendServiceClient(hc, srv.URL(), bearer(testBackendKey))
		workers.Go(func() {
			for n := 1; ; n++ {
				key := fmt.Sprintf("be/%d/%d", i, n)
				v, err := lifeCommit(ctx, bc, user, key, key)
				if !record(write{key: key, version: v, err: err}) {
					return
				}
			}
		})
	}
	workersDone := make(chan struct{})
	go func() { workers.Wait(); close(workersDone) }()

	for _, step := range []struct {
		name string
		c    <-chan struct{}
	}{{"the held request's 100 Continue", got100}, {"50 acknowledged writes", enough}} {
		select {
		case <-step.c:
		case <-workersDone:
			t.Fatalf("writers stopped before %s: %v", step.name, writes[len(writes)-1].err)
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s within 30s", step.name)
		}
	}

	if err := syscall.Kill(srv.PID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wait.ForEvery(t, 10*time.Second, 5*time.Millisecond, func() error {
		if !strings.Contains(srv.Stderr(), "draining") {
			return errors.New("no draining in the log")
		}
		return nil
	})
	wait.ForEvery(t, 10*time.Second, 5*time.Millisecond, func() error {
		c, err := net.DialTimeout("tcp", srv.Addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		return errors.New("still accepting connections while draining")
	})
	select {
	case <-srv.Done():
		t.Fatalf("the server exited with a request in flight:\n%s", srv.Stderr())
	default:
	}
	if _, err := io.WriteString(pw, body); err != nil {
		t.Fatalf("send the held body: %v", err)
	}
	pw.Close()
	a := <-slow
	if a.err != nil || a.code != http.StatusOK || !strings.Contains(a.body, `"version"`) {
		t.Fatalf("the request in flight at SIGTERM: status %d, body %s, err %v", a.code, a.body, a.err)
	}

	select {
	case <-workersDone:
	case <-time.After(30 * time.Second):
		t.Fatal("writers still running 30s after the listener closed")
	}
	select {
	case <-srv.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("dalv serve still running 30s after SIGTERM:\n%s", srv.Stderr())
	}
	if err := srv.ExitErr(); err != nil {
		t.Fatalf("dalv serve exited with %v after SIGTERM, want 0:\n%s", err, srv.Stderr())
	}
	if log := srv.Stderr(); !strings.Contains(log, "stopped") {
		t.Errorf("the log does not say stopped:\n%s", log)
	}

	var acked, refused, maxVersion uint64
	var keys []string
	for _, w := range writes {
		keys = append(keys, w.key)
		switch {
		case w.err == nil:
			acked++
			maxVersion = max(maxVersion, w.version)
		case crashIsTransport(w.err):
			refused++
		default:
			t.Errorf("write %s failed other than by a refused connection: %v", w.key, w.err)
		}
	}
	t.Logf("SIGTERM after %d acknowledged writes; %d writes refused after the listener closed", acked, refused)

	// Every acknowledged write survives; no refused one ran.
	srv = startServerOn(t, data, "--rate-limit", "-1")
	version, got := lifeGet(ctx, t, backendClient(t, srv), user, append(keys, slowKey))
	if got[slowKey] != "in flight" {
		t.Errorf("the write in flight at SIGTERM is missing after restart")
	}
	for _, w := range writes {
		_, ok := got[w.key]
		switch {
		case w.err == nil && !ok:
			t.Errorf("acknowledged write %s (version %d) lost", w.key, w.version)
		case w.err != nil && ok:
			t.Errorf("write %s failed with %v but was applied", w.key, w.err)
		}
	}
	if want := acked + 1; version != want {
		t.Errorf("after restart the partition is at version %d, want %d (the acknowledged writes and the one held in flight)", version, want)
	}
	if version < maxVersion {
		t.Errorf("after restart the partition is at version %d, below the acknowledged %d", version, maxVersion)
	}
}

// (f) A bad flag value stops serve at once, naming the flag.
func TestLifecycleBadFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--shared", "=x"}, []string{"--shared", "=x", "name"}},
		{[]string{"--shared", "beta=tier"}, []string{"--shared", "beta=tier", "NAME=CLAIM:VALUE"}},
		{[]string{"--log-level", "loud"}, []string{"--log-level", "loud"}},
		{[]string{"--log-format", "xml"}, []string{"--log-format", "xml"}},
		{[]string{"--max-response-bytes", "10"}, []string{"--max-response-bytes", "10"}},
		{[]string{"--max-value-bytes", "-1"}, []string{"--max-value-bytes", "-1"}},
		{[]string{"--max-ops", "0"}, []string{"--max-ops", "0"}},
		{[]string{"--max-ops", "abc"}, []string{"--max-ops", "abc"}},
		{[]string{"--max-request-bytes", "-8"}, []string{"--max-request-bytes", "-8"}},
		{[]string{"--rate-burst", "-3"}, []string{"--rate-burst", "-3"}},
		{[]string{"--body-timeout", "0s"}, []string{"--body-timeout", "0s"}},
		{[]string{"--max-connections", "-1"}, []string{"--max-connections", "-1", "open-file limit"}},
		{[]string{"--retention", "soon"}, []string{"--retention", "soon"}},
		{[]string{"--retention", "-1h"}, []string{"--retention", "-1h"}},
		{[]string{"--drain-timeout", "0s"}, []string{"--drain-timeout", "0s"}},
		{[]string{"--store-timeout", "-2s"}, []string{"--store-timeout", "-2s"}},
		{[]string{"--store-cache-bytes", "-1"}, []string{"--store-cache-bytes", "-1", "0 (off)"}},
		{[]string{"--cache-bytes", "0"}, []string{"--cache-bytes", "0"}},
		{[]string{"--memtable-bytes", "1000"}, []string{"--memtable-bytes", "1000", "1 MiB"}},
		{[]string{"--wal-min-sync-interval", "-1ms"}, []string{"--wal-min-sync-interval", "-1ms", "0 (off)"}},
		{[]string{"--wal-min-sync-interval", "1s"}, []string{"--wal-min-sync-interval", "1s", "100ms"}},
		{[]string{"--max-watches-per-user", "0"}, []string{"--max-watches-per-user", "0"}},
		{[]string{"--max-watches-per-device", "-1"}, []string{"--max-watches-per-device", "-1"}},
		{[]string{"--max-feed-watches", "0"}, []string{"--max-feed-watches", "0"}},
		{[]string{"--stream-page-bytes", "0"}, []string{"--stream-page-bytes", "0"}},
		{[]string{"--stream-write-timeout", "0s"}, []string{"--stream-write-timeout", "0s"}},
		{[]string{"--bogus"}, []string{"--bogus"}},
		{[]string{"stray"}, []string{"stray"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			args := append([]string{"serve", "--addr", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "data")}, tc.args...)
			lifeMustFail(t, lifeEnv(testEnv()...), args, tc.want...)
		})
	}
}

// (g) An address in use stops serve at once, naming it.
func TestLifecycleAddrInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	data := filepath.Join(t.TempDir(), "data")
	lifeMustFail(t, lifeEnv(testEnv()...), []string{"serve", "--addr", addr, "--data", data}, addr, "in use")

	// The store it opened is closed again: a server starts on the directory.
	srv := startServerOn(t, data)
	if _, err := lifeCommit(context.Background(), backendClient(t, srv), "life-g", "k", "v"); err != nil {
		t.Fatalf("commit on the directory after the failed start: %v", err)
	}
}
