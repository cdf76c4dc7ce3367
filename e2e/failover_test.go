package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
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
	const devices, batches = 6, 100

	feed := followFeed(t, nodes[1])
	commits := backendCommits(t, nodes[0], "backend0")
	codes := pgLoadWithFault(t, nodes, devices, batches, 1, func() { cluster.KillPrimary(t) })
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

	want := map[string]uint64{"backend0": committed}
	for d := range devices {
		want[fmt.Sprintf("user%d", d)] = batches
	}
	wait.ForEvery(t, 60*time.Second, 10*time.Millisecond, func() error {
		for user, v := range want {
			if n := feed.last(user); n < v {
				return fmt.Errorf("%s is at version %d on the feed, want %d", user, n, v)
			}
		}
		return nil
	})
	feed.stop()
	for user := range want {
		got := feed.versions(user)
		for i, v := range got {
			if v != uint64(i+1) {
				t.Errorf("%s's versions on the feed %v: want 1, 2, 3, ... each once", user, got)
				break
			}
		}
	}
	t.Logf("feed resumed %d times", feed.resumes())
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

// feedFollower follows a node's feed as a backend does: from the start,
// and after a broken stream from the last cursor it was given.
type feedFollower struct {
	mu      sync.Mutex
	seen    map[string][]uint64
	resumed int
	cancel  context.CancelFunc
	done    chan struct{}
}

// followFeed starts following srv's feed; stop ends it.
func followFeed(t *testing.T, srv *proc.Server) *feedFollower {
	t.Helper()
	c := backendClient(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	f := &feedFollower{seen: make(map[string][]uint64), cancel: cancel, done: make(chan struct{})}
	t.Cleanup(f.stop)
	go func() {
		defer close(f.done)
		cursor := "start"
		for ctx.Err() == nil {
			s, err := c.Watch(ctx, pgBearer(connect.NewRequest(&dalvv1.BackendServiceWatchRequest{Cursor: cursor}), testBackendKey))
			if err == nil {
				for s.Receive() {
					ev := s.Msg()
					if ev.GetCursor() != "" {
						cursor = ev.GetCursor()
					}
					if ev.GetHeartbeat() {
						continue
					}
					f.mu.Lock()
					f.seen[ev.GetUser()] = append(f.seen[ev.GetUser()], ev.GetVersion())
					f.mu.Unlock()
				}
				s.Close()
			}
			if ctx.Err() != nil {
				return
			}
			f.mu.Lock()
			f.resumed++
			f.mu.Unlock()
			time.Sleep(50 * time.Millisecond) // a backend's reconnect back-off, not a wait for an event
		}
	}()
	return f
}

// last returns the highest version of user's the feed has carried.
func (f *feedFollower) last(user string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Max(append([]uint64{0}, f.seen[user]...))
}

// versions returns user's versions in the order the feed carried them.
func (f *feedFollower) versions(user string) []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen[user])
}

// resumes returns how many times the stream broke and was resumed.
func (f *feedFollower) resumes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resumed
}

func (f *feedFollower) stop() {
	f.cancel()
	<-f.done
}
