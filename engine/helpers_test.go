package engine

import (
	"context"
	"sync"
	"testing"
	"time"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/store/pebble"
	"github.com/dalvdb/dalv/value"
)

// clock is a test clock that moves only when told to.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// newEngine returns an engine over a fresh embedded store in a temporary
// directory, closed when the test ends, and the clock its commits take.
func newEngine(t *testing.T, lim Limits) (*Engine, *clock) {
	t.Helper()
	st, err := pebble.Open(t.TempDir(), pebble.Options{})
	if err != nil {
		t.Fatalf("pebble.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e, err := New(Config{Store: st, Limits: lim, Now: c.Now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e, c
}

func user(name string) store.Partition { return store.Partition{Name: name} }

func putOp(key, v string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: value.Scalar([]byte(v))}
}

func delOp(key string) *dalvv1.Op {
	return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: key}
}

// mustCommit commits ops to p as a backend and returns the new version.
func mustCommit(t *testing.T, e *Engine, p store.Partition, ops ...*dalvv1.Op) uint64 {
	t.Helper()
	v, err := e.Commit(context.Background(), p, ops, CommitOptions{})
	if err != nil {
		t.Fatalf("Commit(%s): %v", p, err)
	}
	return v
}
