package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/internal/diskfault"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// TestDiskFaultServer runs `dalv serve` on the embedded store with disk
// faults injected through its trigger file (see package diskfault) while
// four backends commit: a failed WAL write, a failed WAL fsync, a full
// disk, each DALV_DISK_FAULT_ROUNDS times (default 1) on one data
// directory. The commits that meet the fault fail with unavailable (or,
// should Pebble end the process, with a cut connection); from then on every
// call fails with unavailable and a message that names the disk, /healthz
// is 503 and the gRPC health check NOT_SERVING, and the store stays failed
// when the disk heals. Restarted on a healthy disk, the server holds every
// acknowledged commit and takes new ones. It logs a summary line per kind.
func TestDiskFaultServer(t *testing.T) {
	rounds := crashEnvInt(t, "DALV_DISK_FAULT_ROUNDS", 1)
	for _, kind := range diskfault.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			data := filepath.Join(t.TempDir(), "data")
			trigger := filepath.Join(t.TempDir(), "fault")
			var acked [diskFaultWriters]uint64
			refused, exits := 0, 0
			for round := range rounds {
				r, exited := diskFaultRound(t, kind, data, trigger, &acked)
				refused += r
				if exited {
					exits++
				}
				if t.Failed() {
					t.Fatalf("round %d of %s failed", round+1, kind)
				}
			}
			t.Logf("disk faults: kind=%s injected=%d survived=%d commits_refused=%d process_exits=%d", kind, rounds, rounds, refused, exits)
		})
	}
}

// diskFaultWriters is how many backends commit in a TestDiskFaultServer round.
const diskFaultWriters = 4

// diskFaultRound is one round of TestDiskFaultServer: serve on data,
// commit until the fault, check the refusals, restart healthy and check
// that every commit acknowledged so far (acked, per writer, carried across
// rounds) is there. It returns the commits refused and whether the server
// ended by itself.
func diskFaultRound(t *testing.T, kind diskfault.Kind, data, trigger string, acked *[diskFaultWriters]uint64) (refused int, exited bool) {
	t.Helper()
	srv := startServerWith(t, proc.Options{Data: data, Env: []string{diskfault.EnvVar + "=" + trigger}})
	b := backendClient(t, srv)
	var now [diskFaultWriters]atomic.Uint64
	failures := make(chan error, diskFaultWriters)
	var wg sync.WaitGroup
	for w := range diskFaultWriters {
		user := fmt.Sprint("u", w)
		now[w].Store(acked[w])
		wg.Go(func() {
			for {
				resp, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: ops(opPut("a", fmt.Sprint(now[w].Load()+1)))}))
				if err != nil {
					failures <- err
					return
				}
				now[w].Store(resp.Msg.GetVersion())
			}
		})
	}
	wait.For(t, time.Minute, func() error {
		for w := range diskFaultWriters {
			if n := now[w].Load(); n < acked[w]+10 {
				return fmt.Errorf("writer %d has %d commits acknowledged this round", w, n-acked[w])
			}
		}
		return nil
	})
	if err := os.WriteFile(trigger, []byte(kind), 0o644); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(failures)
	select {
	case <-srv.Done():
		exited = true
	default:
	}
	for err := range failures {
		refused++
		if code := connect.CodeOf(err); code != connect.CodeUnavailable {
			t.Errorf("commit under %s: %v, want unavailable", kind, err)
		}
		if !exited && !strings.Contains(err.Error(), "disk") {
			t.Errorf("commit under %s: %q does not say the disk failed", kind, err)
		}
	}
	for w := range diskFaultWriters {
		acked[w] = now[w].Load()
	}
	if exited {
		t.Logf("dalv serve ended under %s: %v", kind, srv.ExitErr())
	} else {
		// The disk heals; the store stays failed, since Pebble may hold
		// commits that were never synced.
		if err := os.Remove(trigger); err != nil {
			t.Fatal(err)
		}
		_, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "u0", Ops: ops(opPut("b", "x"))}))
		wantError(t, err, connect.CodeUnavailable, "disk failed", "healthy disk")
		_, err = b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{User: "u0"}))
		wantError(t, err, connect.CodeUnavailable, "disk")
		// Even a call that reads no data is refused.
		_, err = deviceClient(t, srv, "u0").GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{}))
		wantError(t, err, connect.CodeUnavailable, "disk")
		if status, body := get(t, srv, "/healthz"); status != http.StatusServiceUnavailable || !strings.Contains(body, "disk") {
			t.Errorf("GET /healthz after %s = %d %q, want 503 naming the disk", kind, status, body)
		}
		if got := grpcHealth(t, srv); got != "SERVING_STATUS_NOT_SERVING" {
			t.Errorf("gRPC health after %s = %s, want SERVING_STATUS_NOT_SERVING", kind, got)
		}
		if err := srv.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(trigger); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}

	srv = startServerOn(t, data)
	b = backendClient(t, srv)
	for w := range diskFaultWriters {
		user := fmt.Sprint("u", w)
		p := readPartition(t, b, user)
		n := acked[w]
		// The commit the fault met may or may not be there: its caller
		// was told the outcome is unknown. Each commit wrote its version.
		if p.version < n || p.version > n+1 || len(p.items) == 0 || p.items[0] != fmt.Sprintf("a=%d@%d", p.version, p.version) {
			t.Errorf("%s after the restart: %v, acknowledged %d", user, p, n)
		}
		acked[w] = p.version
	}
	if _, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "u0", Ops: ops(opPut("b", "x"))})); err != nil {
		t.Errorf("commit after the restart: %v", err)
	} else {
		acked[0]++
	}
	if status, body := get(t, srv, "/healthz"); status != http.StatusOK {
		t.Errorf("GET /healthz after the restart = %d %q", status, body)
	}
	if got := grpcHealth(t, srv); got != "SERVING_STATUS_SERVING" {
		t.Errorf("gRPC health after the restart = %s, want SERVING_STATUS_SERVING", got)
	}
	if err := srv.Stop(15 * time.Second); err != nil {
		t.Errorf("dalv serve did not stop cleanly: %v\n%s", err, srv.Stderr())
	}
	return refused, exited
}

// grpcHealth is the server's status by the standard gRPC health check, asked
// in the Connect protocol with JSON.
func grpcHealth(t testing.TB, srv *proc.Server) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), http.MethodPost, srv.URL()+"/grpc.health.v1.Health/Check", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("gRPC health check: %v", err)
	}
	defer resp.Body.Close()
	var answer struct{ Status string }
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("gRPC health check: %s, %v", resp.Status, err)
	}
	return answer.Status
}
