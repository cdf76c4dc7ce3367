package e2e

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// This file runs `dalv serve --store postgres://...` as several nodes over
// one PostgreSQL: $DALV_TEST_POSTGRES, or a throwaway server the tests
// start (see internal/pgtest).

// pgNodes starts n nodes on a fresh schema of the database at base, each
// with its own application_name, and returns them with those names.
func pgNodes(t *testing.T, base string, n int, args ...string) ([]*proc.Server, []string) {
	t.Helper()
	schema, u := pgtest.SchemaOn(t, base)
	nodes := make([]*proc.Server, n)
	apps := make([]string, n)
	for i := range nodes {
		apps[i] = fmt.Sprintf("%s-node%d", schema, i+1)
		nodeURL := pgtest.WithParam(u, "application_name", apps[i])
		nodes[i] = startServer(t, append([]string{"--store", nodeURL}, args...)...)
	}
	return nodes, apps
}

// pgListeners returns how many connections of the node of application
// name app listen for other nodes' commits.
func pgListeners(t *testing.T, base, app string) int {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgxConnect(c, base)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(c)
	var n int
	if err := conn.QueryRow(c, `SELECT count(*) FROM pg_stat_activity
		WHERE application_name = $1 AND query ILIKE 'listen %'`, app).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// pgWaitFor polls cond on a new connection to the database at url until it
// returns nil, and fails t when 30 seconds pass first.
func pgWaitFor(t *testing.T, url string, cond func(c context.Context, conn *pgx.Conn) error) {
	t.Helper()
	wait.ForEvery(t, 30*time.Second, 10*time.Millisecond, func() error {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := pgxConnect(c, url)
		if err != nil {
			return err
		}
		defer conn.Close(c)
		return cond(c, conn)
	})
}

// pgBearer sets a stream request's Authorization (the clients' bearer
// interceptor covers unary calls only).
func pgBearer[T any](req *connect.Request[T], tok string) *connect.Request[T] {
	req.Header().Set("Authorization", "Bearer "+tok)
	return req
}

// pgStream receives a server stream's messages into a channel, until the
// stream ends (the channel is closed then).
func pgStream[T any](s *connect.ServerStreamForClient[T]) <-chan *T {
	ch := make(chan *T, 64)
	go func() {
		defer close(ch)
		for s.Receive() {
			ch <- s.Msg()
		}
	}()
	return ch
}

// pgNext returns the next message of ch that keep accepts, failing the test
// after timeout.
func pgNext[T any](t *testing.T, ch <-chan *T, timeout time.Duration, what string, keep func(*T) bool) *T {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("stream ended while waiting for %s", what)
			}
			if keep(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s within %v", what, timeout)
		}
	}
}

// TestPostgresThreeNodes runs three nodes on one database: a device syncs
// on node 1, the user's other device watches on node 2 and sees the commit
// live, a backend follows the feed on node 3 and sees it; a retry of the
// batch on node 2 is answered as the first success; and the feed's cursor
// from node 3 resumes on node 1.
func TestPostgresThreeNodes(t *testing.T) {
	t.Parallel()
	testThreeNodes(t, pgtest.Server(t))
}

// TestCitusThreeNodes is TestPostgresThreeNodes on Citus.
func TestCitusThreeNodes(t *testing.T) {
	t.Parallel()
	testThreeNodes(t, pgtest.Citus(t))
}

func testThreeNodes(t *testing.T, base string) {
	// A long heartbeat: what arrives sooner came by the nodes' notifications.
	const heartbeat = 20 * time.Second
	nodes, apps := pgNodes(t, base, 3, "--heartbeat", heartbeat.String())
	// A node listens for the others' commits only while a stream on it
	// needs them; an open stream's first heartbeat comes after it listens.
	for i, app := range apps {
		if n := pgListeners(t, base, app); n != 0 {
			t.Errorf("node %d has %d listening connections before any stream, want 0", i+1, n)
		}
		if g := gauge(t, nodes[i], "dalv_remote_commits_listening", nil); g != 0 {
			t.Errorf("node %d: dalv_remote_commits_listening %v before any stream, want 0", i+1, g)
		}
	}

	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	feed, err := backendClient(t, nodes[2]).Watch(sctx, pgBearer(connect.NewRequest(&dalvv1.BackendServiceWatchRequest{Cursor: "start"}), testBackendKey))
	if err != nil {
		t.Fatal(err)
	}
	feedEvents := pgStream(feed)
	pgNext(t, feedEvents, 30*time.Second, "the feed's first heartbeat", func(ev *dalvv1.ChangeEvent) bool { return ev.GetHeartbeat() })
	watch, err := deviceClient(t, nodes[1], "alice").Watch(sctx, pgBearer(connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "tablet"}), token(t, "alice")))
	if err != nil {
		t.Fatal(err)
	}
	watchEvents := pgStream(watch)
	pgNext(t, watchEvents, 30*time.Second, "the end of the watch's catch-up", func(ev *dalvv1.WatchEvent) bool { return ev.GetHeartbeat() })
	for i, want := range []int{0, 1, 1} {
		if n := pgListeners(t, base, apps[i]); n != want {
			t.Errorf("node %d has %d listening connections, want %d", i+1, n, want)
		}
		if g := gauge(t, nodes[i], "dalv_remote_commits_listening", nil); g != float64(want) {
			t.Errorf("node %d: dalv_remote_commits_listening %v, want %d", i+1, g, want)
		}
	}

	phone := connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone", Batch: 1, Ops: ops(opPut("prefs/theme", "dark"))})
	committed := time.Now()
	resp, err := deviceClient(t, nodes[0], "alice").Sync(ctx(t), phone)
	if err != nil || resp.Msg.GetStatus() != accepted || resp.Msg.GetVersion() != 1 {
		t.Fatalf("Sync on node 1 = %v, %v; want accepted at version 1", resp, err)
	}

	ev := pgNext(t, watchEvents, heartbeat/2, "the commit on node 2's watch", func(ev *dalvv1.WatchEvent) bool { return !ev.GetHeartbeat() })
	t.Logf("commit on node 1 to watcher on node 2: %v", time.Since(committed))
	if len(ev.GetChanges()) != 1 || ev.GetVersion() != 1 || ev.GetChanges()[0].GetKey() != "prefs/theme" || show(ev.GetChanges()[0].GetValue()) != "dark" {
		t.Errorf("watch event on node 2 = %v, want prefs/theme=dark at version 1", ev)
	}
	fev := pgNext(t, feedEvents, heartbeat/2, "the commit on node 3's feed", func(ev *dalvv1.ChangeEvent) bool { return !ev.GetHeartbeat() })
	t.Logf("commit on node 1 to feed on node 3: %v", time.Since(committed))
	if fev.GetUser() != "alice" || fev.GetVersion() != 1 || len(fev.GetOps()) != 1 || fev.GetOps()[0].GetKey() != "prefs/theme" {
		t.Errorf("feed event on node 3 = %v, want alice's prefs/theme at version 1", fev)
	}

	// The phone's batch again, on node 2, as after a lost answer: answered
	// as the first time, applied once.
	resp, err = deviceClient(t, nodes[1], "alice").Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone", Batch: 1, Ops: ops(opPut("prefs/theme", "dark"))}))
	if err != nil || resp.Msg.GetStatus() != accepted || resp.Msg.GetVersion() != 1 {
		t.Fatalf("the same batch again on node 2 = %v, %v; want accepted at version 1", resp, err)
	}

	// Node 3's cursor resumes on node 1.
	resumed, err := backendClient(t, nodes[0]).Watch(sctx, pgBearer(connect.NewRequest(&dalvv1.BackendServiceWatchRequest{Cursor: fev.GetCursor()}), testBackendKey))
	if err != nil {
		t.Fatal(err)
	}
	resumedEvents := pgStream(resumed)
	pgNext(t, resumedEvents, 30*time.Second, "the resumed feed's first heartbeat", func(ev *dalvv1.ChangeEvent) bool { return ev.GetHeartbeat() })
	resp, err = deviceClient(t, nodes[2], "alice").Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "tablet", BaseVersion: 1, Batch: 1, Ops: ops(opPut("prefs/size", "L"))}))
	if err != nil || resp.Msg.GetVersion() != 2 {
		t.Fatalf("Sync on node 3 = %v, %v; want version 2", resp, err)
	}
	rev := pgNext(t, resumedEvents, heartbeat/2, "the next commit on node 1's resumed feed", func(ev *dalvv1.ChangeEvent) bool { return !ev.GetHeartbeat() })
	if rev.GetUser() != "alice" || rev.GetVersion() != 2 {
		t.Errorf("resumed feed's event = %v, want alice at version 2", rev)
	}
	ev = pgNext(t, watchEvents, heartbeat/2, "the second commit on node 2's watch", func(ev *dalvv1.WatchEvent) bool { return !ev.GetHeartbeat() })
	if ev.GetVersion() != 2 {
		t.Errorf("watch event on node 2 = %v, want version 2", ev)
	}
}

// TestPostgresRestart restarts PostgreSQL (a server of the test's own)
// while devices sync through two nodes: requests end accepted or with
// unavailable, the nodes reconnect by themselves, every acknowledged batch
// is there once.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	srv, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	nodes, _ := pgNodes(t, srv.URL, 2, "--heartbeat", "2s")
	pgLoadWithFault(t, nodes, 16, 1, func() {
		if err := srv.Restart(); err != nil {
			t.Error(err)
		}
	})
}

// TestPostgresConnectionsKilled kills a node's PostgreSQL connections
// while devices sync through it: each request ends accepted or with
// unavailable (the device retries the same batch), the node recovers by
// itself, no acknowledged batch is lost and none applies twice.
func TestPostgresConnectionsKilled(t *testing.T) {
	t.Parallel()
	base := pgtest.Server(t)
	nodes, apps := pgNodes(t, base, 2, "--heartbeat", "2s")
	pgLoadWithFault(t, nodes, 22, 3, func() {
		pgtest.ExecOn(t, base, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", apps[0])
	})
}

// TestPostgresConnectionDelayed delays every byte between a node and
// PostgreSQL by more than the node's --store-timeout while devices sync
// through it: requests in flight end with unavailable (the device retries
// the same batch), and once the delay lifts the node serves on by itself,
// with no acknowledged batch lost and none applied twice. It uses a server
// of its own: the delayed transactions stay open for seconds, and would
// stall the change feed of every other test on a shared server.
func TestPostgresConnectionDelayed(t *testing.T) {
	t.Parallel()
	srv, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	_, direct := pgtest.SchemaOn(t, srv.URL)
	proxy, delayed := pgtest.NewProxy(t, direct)
	nodes := []*proc.Server{
		startServer(t, "--store", delayed, "--store-timeout", "1s", "--heartbeat", "2s"),
		startServer(t, "--store", direct, "--heartbeat", "2s"),
	}
	codes := pgLoadWithFault(t, nodes, 12, 1, func() {
		proxy.SetDelay(3 * time.Second)
		// The node gives up on its statements after 1s: wait until a sync
		// has ended with unavailable, then lift the delay.
		wait.ForEvery(t, time.Minute, 10*time.Millisecond, func() error {
			m := metric(scrape(t, nodes[0]), "dalv_requests_total", map[string]string{
				"procedure": dalvv1connect.ClientServiceSyncProcedure, "code": "unavailable"})
			if m.GetCounter().GetValue() == 0 {
				return errors.New("no sync has ended with unavailable yet")
			}
			return nil
		})
		proxy.SetDelay(0)
	})
	if codes["unavailable"] == 0 {
		t.Errorf("answers %v: no request ended with unavailable while PostgreSQL was 3s away", codes)
	}
}

// loadBatches is how many batches each device of pgLoadWithFault syncs.
// Each batch writes a key of its own, and a node holds the state of a
// partition, and so commits to it in grouped statements, only while the
// partition has at most 256 entries (what the PostgreSQL store reads ahead):
// with 15 batches every commit after a device's first goes through the
// grouped statements, and so the faults strike those.
const loadBatches = 15

// pgLoadWithFault has devices (each its own user) sync loadBatches batches
// through nodes[0], retrying a batch that ends with unavailable, and calls
// fault faults times while the load is well under way, each device's last
// batch waiting for the faults. It checks that the
// load went through grouped statements of several commits before the faults
// and from them on, then through nodes[1] that every batch is there once, and
// that nodes[0] serves on. It returns how many answers each code had ("ok"
// for success).
func pgLoadWithFault(t *testing.T, nodes []*proc.Server, devices, faults int, fault func()) map[string]int {
	t.Helper()
	const batches = loadBatches
	var acked atomic.Int64
	// Each device holds its last batch back until every fault has been
	// injected, so that the load is still running when they strike.
	faulted := make(chan struct{})
	var mu sync.Mutex
	codes := make(map[string]int)
	deadline := time.Now().Add(90 * time.Second)
	var wg sync.WaitGroup
	for d := range devices {
		wg.Go(func() {
			user := fmt.Sprintf("user%d", d)
			c := deviceClient(t, nodes[0], user)
			var version uint64
			for b := uint64(1); b <= uint64(batches); b++ {
				if b == uint64(batches) {
					<-faulted
				}
				for {
					req := connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone", BaseVersion: version, Batch: b,
						Ops: ops(opPut(fmt.Sprintf("k/%03d", b), fmt.Sprint(b)))})
					rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					resp, err := c.Sync(rctx, req)
					cancel()
					code := codeOf(err)
					mu.Lock()
					codes[code]++
					mu.Unlock()
					if err == nil {
						if resp.Msg.GetStatus() != accepted {
							t.Errorf("%s batch %d: status %v", user, b, resp.Msg.GetStatus())
							return
						}
						version = resp.Msg.GetVersion()
						acked.Add(1)
						break
					}
					if code != "unavailable" {
						t.Errorf("%s batch %d: %v, want success or unavailable", user, b, err)
						return
					}
					if time.Now().After(deadline) {
						t.Errorf("%s batch %d: still unavailable: %v", user, b, err)
						return
					}
					time.Sleep(10 * time.Millisecond) // a client's retry back-off, not a wait for an event
				}
			}
		})
	}
	var groupedBefore float64
	for k := range faults {
		// Strike when the load is well under way, then let it go on.
		target := int64((k + 1) * devices * batches / (faults + 1))
		wait.ForEvery(t, time.Minute, time.Millisecond, func() error {
			if acked.Load() < target {
				return fmt.Errorf("%d batches acknowledged, waiting for %d", acked.Load(), target)
			}
			return nil
		})
		if k == 0 {
			groupedBefore = groupedCommits(t, nodes[0])
		}
		fault()
	}
	close(faulted)
	wg.Wait()
	t.Logf("answers: %v", codes)
	// The load went through grouped statements of held commits before the
	// faults and from them on, so the faults struck them.
	fams := scrape(t, nodes[0])
	held, statements := metric(fams, "dalv_postgres_held_commits_total", map[string]string{"outcome": "committed"}), metric(fams, "dalv_postgres_held_statements_total", nil)
	if held == nil || statements == nil || statements.GetCounter().GetValue() == 0 || held.GetCounter().GetValue() <= statements.GetCounter().GetValue() {
		t.Errorf("held commits %v in statements %v: want grouped statements under the load", held, statements)
	} else {
		t.Logf("%v held commits in %v statements", held.GetCounter().GetValue(), statements.GetCounter().GetValue())
	}
	if grouped := groupedCommits(t, nodes[0]); groupedBefore == 0 || grouped <= groupedBefore {
		t.Errorf("%v commits in grouped statements before the first fault, %v in all: want them both before and from the fault on",
			groupedBefore, grouped)
	}

	// Through the other node: every acknowledged batch is there once.
	for d := range devices {
		user := fmt.Sprintf("user%d", d)
		var resp *connect.Response[dalvv1.SyncResponse]
		wait.ForEvery(t, 30*time.Second, 10*time.Millisecond, func() (err error) {
			resp, err = deviceClient(t, nodes[1], user).Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "laptop"}))
			return err
		})
		if got := resp.Msg.GetVersion(); got != uint64(batches) {
			t.Errorf("%s is at version %d after %d batches, each applied once", user, got, batches)
		}
		got := make(map[string]string)
		for _, c := range resp.Msg.GetChanges() {
			got[c.GetKey()] = show(c.GetValue())
		}
		for b := 1; b <= batches; b++ {
			if k := fmt.Sprintf("k/%03d", b); got[k] != fmt.Sprint(b) {
				t.Errorf("%s %s = %q, want %q", user, k, got[k], fmt.Sprint(b))
			}
		}
	}
	// The node that saw the faults serves on.
	var resp *connect.Response[dalvv1.SyncResponse]
	wait.ForEvery(t, 30*time.Second, 10*time.Millisecond, func() (err error) {
		resp, err = deviceClient(t, nodes[0], "user0").Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "phone",
			BaseVersion: uint64(batches), Batch: uint64(batches) + 1, Ops: ops(opPut("after", "x"))}))
		return err
	})
	if resp.Msg.GetVersion() != uint64(batches)+1 {
		t.Errorf("sync on node 1 after the faults: version %d, want %d", resp.Msg.GetVersion(), batches+1)
	}
	return codes
}

// groupedCommits returns how many commits node has written in grouped
// statements of held partitions.
func groupedCommits(t *testing.T, node *proc.Server) float64 {
	t.Helper()
	return metric(scrape(t, node), "dalv_postgres_commits_total", map[string]string{"way": "grouped"}).GetCounter().GetValue()
}

// pgxConnect connects to the database at u.
func pgxConnect(ctx context.Context, u string) (*pgx.Conn, error) { return pgx.Connect(ctx, u) }

// TestPostgresRoundRobin spreads each device's requests over three nodes,
// one after another, as a balancer that balances requests rather than
// connections does, while three devices of one user sync at once: every
// batch applies once, versions stay dense, a batch retried on another node
// is answered as the first time, and the feed carries each commit once, in
// version order.
func TestPostgresRoundRobin(t *testing.T) {
	t.Parallel()
	testRoundRobin(t, pgtest.Server(t))
}

// TestCitusRoundRobin is TestPostgresRoundRobin on Citus.
func TestCitusRoundRobin(t *testing.T) {
	t.Parallel()
	testRoundRobin(t, pgtest.Citus(t))
}

func testRoundRobin(t *testing.T, base string) {
	nodes, _ := pgNodes(t, base, 3)
	const batches = 30
	devices := []string{"phone", "tablet", "laptop"}
	var wg sync.WaitGroup
	for d, device := range devices {
		wg.Go(func() {
			var version uint64
			for b := uint64(1); b <= batches; b++ {
				req := &dalvv1.SyncRequest{DeviceId: device, BaseVersion: version, Batch: b,
					Ops: ops(opPut(fmt.Sprintf("%s/%02d", device, b), fmt.Sprint(b)))}
				node := nodes[(d+int(b))%len(nodes)]
				resp, err := deviceClient(t, node, "erin").Sync(ctx(t), connect.NewRequest(req))
				if err != nil || resp.Msg.GetStatus() != accepted {
					t.Errorf("%s batch %d on %s: %v, %v; want accepted", device, b, node.URL(), resp, err)
					return
				}
				if b%10 == 0 {
					// The answer was lost: the same batch on the next node is
					// answered as a success, with the partition as it is now
					// (its own key among the changes), and applies nothing:
					// the final version below counts each batch once.
					again, err := deviceClient(t, nodes[(d+int(b)+1)%len(nodes)], "erin").Sync(ctx(t), connect.NewRequest(req))
					if err != nil || again.Msg.GetStatus() != accepted || again.Msg.GetVersion() < resp.Msg.GetVersion() {
						t.Errorf("%s batch %d again: %v, %v; want accepted at version %d or later", device, b, again, err, resp.Msg.GetVersion())
						return
					}
					key, found := fmt.Sprintf("%s/%02d", device, b), false
					for _, c := range again.Msg.GetChanges() {
						found = found || c.GetKey() == key && show(c.GetValue()) == fmt.Sprint(b)
					}
					if !found {
						t.Errorf("%s batch %d again: changes %v lack its own %s", device, b, again.Msg.GetChanges(), key)
					}
				}
				version = resp.Msg.GetVersion()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	total := uint64(len(devices) * batches)
	resp, err := deviceClient(t, nodes[0], "erin").Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "watch"}))
	if err != nil || resp.Msg.GetVersion() != total {
		t.Fatalf("pull after the load: %v, %v; want version %d, one for each batch", resp, err, total)
	}
	if n := len(resp.Msg.GetChanges()); n != int(total) {
		t.Errorf("pull after the load: %d keys, want %d", n, total)
	}

	// The feed, from the start, on one node: each version once, in order.
	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	feed, err := backendClient(t, nodes[1]).Watch(sctx, pgBearer(connect.NewRequest(&dalvv1.BackendServiceWatchRequest{Cursor: "start"}), testBackendKey))
	if err != nil {
		t.Fatal(err)
	}
	events := pgStream(feed)
	for v := uint64(1); v <= total; v++ {
		ev := pgNext(t, events, 30*time.Second, fmt.Sprintf("erin's version %d on the feed", v), func(ev *dalvv1.ChangeEvent) bool { return !ev.GetHeartbeat() })
		if ev.GetUser() != "erin" || ev.GetVersion() != v {
			t.Fatalf("feed event %d = %s at version %d, want erin at version %d", v, ev.GetUser(), ev.GetVersion(), v)
		}
	}
}

// TestPostgresStoreCacheOff checks --store-cache-bytes: by default a node
// commits a device's later syncs on the partition state it holds, in its
// grouped statements; with 0 it holds none, and every commit is a
// transaction of its own. Both apply every batch once.
func TestPostgresStoreCacheOff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		held bool
	}{
		{nil, true},
		{[]string{"--store-cache-bytes", "0"}, false},
	} {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			t.Parallel()
			nodes, _ := pgNodes(t, pgtest.Server(t), 1, tc.args...)
			const batches = 10
			var version uint64
			for b := uint64(1); b <= batches; b++ {
				req := &dalvv1.SyncRequest{DeviceId: "phone", BaseVersion: version, Batch: b, Ops: ops(opPut("k", fmt.Sprint(b)))}
				resp, err := deviceClient(t, nodes[0], "fay").Sync(ctx(t), connect.NewRequest(req))
				if err != nil || resp.Msg.GetStatus() != accepted || resp.Msg.GetVersion() != b {
					t.Fatalf("batch %d: %v, %v; want accepted at version %d", b, resp, err, b)
				}
				version = b
			}
			fams := scrape(t, nodes[0])
			m := metric(fams, "dalv_postgres_held_commits_total", map[string]string{"outcome": "committed"})
			s := metric(fams, "dalv_postgres_held_statements_total", nil)
			if m == nil || s == nil {
				t.Fatal("no dalv_postgres_held_commits_total or dalv_postgres_held_statements_total on /metrics")
			}
			held, statements := m.GetCounter().GetValue(), s.GetCounter().GetValue()
			switch {
			case tc.held && (held != batches-1 || statements != held):
				t.Errorf("%v held commits in %v statements, want %d in as many: the first sync reads the partition, the others commit on the state it left", held, statements, batches-1)
			case !tc.held && (held != 0 || statements != 0):
				t.Errorf("%v held commits in %v statements with the cache off, want none", held, statements)
			}
		})
	}
}
