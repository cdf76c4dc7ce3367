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
// target_session_attrs=read-write. While devices sync through node 1 and a
// backend follows the feed on node 2, the primary's postmaster is killed
// and Patroni promotes the standby: every acknowledged batch is there once
// afterwards, both nodes serve on by themselves, and the feed, resumed from
// the last cursor it gave, carries each user's versions once and in order.
func TestPostgresFailover(t *testing.T) {
	t.Parallel()
	cluster := pgtest.StartPatroni(t)
	nodes, _ := pgNodes(t, cluster.URL, 2, "--heartbeat", "2s")
	const devices, batches = 4, 30

	feed := followFeed(t, nodes[1])
	pgLoadWithFault(t, nodes, devices, batches, 1, func() { cluster.KillPrimary(t) })

	wait.ForEvery(t, 60*time.Second, 10*time.Millisecond, func() error {
		for d := range devices {
			if n := feed.last(fmt.Sprintf("user%d", d)); n < batches {
				return fmt.Errorf("user%d is at version %d on the feed, want %d", d, n, batches)
			}
		}
		return nil
	})
	feed.stop()
	for d := range devices {
		user := fmt.Sprintf("user%d", d)
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
