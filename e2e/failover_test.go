package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
)

// TestPostgresFailover runs two nodes on a Patroni pair (a primary and a
// synchronous standby), reached through a multi-host URL with
// target_session_attrs=read-write. While devices sync and a backend
// commits through node 1 and a backend follows the feed on node 2, the
// primary's Patroni and postmaster are killed and Patroni promotes the
// standby: every acknowledged batch and commit is there once afterwards, both nodes serve on by themselves, and the feed, resumed from
// the last cursor it gave, carries each user's versions once and in order.
func TestPostgresFailover(t *testing.T) {
	t.Parallel()
	cluster := pgtest.StartPatroni(t)
	nodes, _ := pgNodes(t, cluster.URL, 2, "--heartbeat", "2s")
	const devices, batches = 40, loadBatches

	feed := &feedReader{}
	feedCtx, stopFeed := context.WithCancel(context.Background())
	feedDone := make(chan struct{})
	go func() { defer close(feedDone); feed.follow(feedCtx, nodes[1], "start") }()
	defer func() { stopFeed(); <-feedDone }()
	commits := backendCommits(t, nodes[0], "backend0")
	codes := pgLoadWithFault(t, nodes, devices, 1, func() { cluster.KillPrimary(t) })
	if codes["unavailable"] == 0 {
		t.Errorf("answers %v: no sync ended with unavailable, so none struck the failover", codes)
	}
	committed := commits()
	if committed < 2 {
		t.Errorf("the backend committed %d times during the load", committed)
	}
	// Each acknowledged commit applied once: the partition is at exactly
	// that version.
	if _, err := backendClient(t, nodes[1]).Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "backend0",
		ExpectedVersion: &committed, Ops: ops(opPut("after", "x"))})); err != nil {
		t.Errorf("commit expecting version %d after %d acknowledged commits: %v", committed, committed, err)
	}

	// The partitions' versions: each device's batches, each backend commit,
	// and the one write after the faults to each of user0 and backend0.
	want := map[string]uint64{"user:backend0": committed + 1}
	for d := range devices {
		want[fmt.Sprintf("user:user%d", d)] = batches
	}
	want["user:user0"]++
	feedUpTo(t, feed, map[string]uint64{}, want)
	events, breaks := feed.snapshot()
	if err := checkFeed(events, map[string]uint64{}, want); err != nil {
		t.Error(err)
	}
	// In order with none skipped, and each once: the cursor resumed after
	// the last event it was given, across the failover too.
	count := map[string]uint64{}
	for _, ev := range events {
		count[ev.part]++
	}
	for part, v := range want {
		if count[part] != v {
			t.Errorf("%s: the feed carried %d events for its %d versions", part, count[part], v)
		}
	}
	t.Logf("feed resumed %d times", breaks)
}

// backendCommits has a backend commit to user's partition through srv,
// one key a commit, each retried with its idempotency key while it ends
// with unavailable, until the returned function is called; that function
// returns how many commits were acknowledged.
func backendCommits(t *testing.T, srv *proc.Server, user string) func() uint64 {
	t.Helper()
	c := backendClient(t, srv)
	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		var n uint64
		defer func() { done <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			req := &dalvv1.CommitRequest{User: user, IdempotencyKey: fmt.Sprintf("c%d", n+1), Ops: ops(opPut(fmt.Sprintf("c/%03d", n+1), "x"))}
			deadline := time.Now().Add(90 * time.Second)
			for {
				rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				resp, err := c.Commit(rctx, connect.NewRequest(req))
				cancel()
				if err == nil {
					if resp.Msg.GetVersion() != n+1 {
						t.Errorf("%s's commit %d: version %d", user, n+1, resp.Msg.GetVersion())
						return
					}
					n++
					break
				}
				if codeOf(err) != "unavailable" || time.Now().After(deadline) {
					t.Errorf("%s's commit %d: %v, want success or unavailable", user, n+1, err)
					return
				}
				time.Sleep(10 * time.Millisecond) // a backend's retry back-off, not a wait for an event
			}
		}
	}()
	return func() uint64 {
		close(stop)
		return <-done
	}
}
