package store

import (
	"context"
	"sync"
	"sync/atomic"
)

// Gate admits a store's operations until the store closes, and lets Close
// wait for those in flight. The zero value admits operations.
//
// Gate.mu is held only to enter or to close, never with another lock.
type Gate struct {
	mu     sync.RWMutex
	closed atomic.Bool // set under mu; read without it by Closing
	active sync.WaitGroup
}

// Enter admits one operation, or fails with [ErrClosed] once Close has
// begun. The caller calls Exit when the operation is done.
func (g *Gate) Enter() error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed.Load() {
		return ErrClosed
	}
	g.active.Add(1)
	return nil
}

// EnterPartition admits one operation on p under ctx: it fails as Enter
// does, with ctx's error when ctx is done, and with [ErrEmptyPartition] for
// a partition without a name. Only when it returns nil does the caller call
// Exit.
func (g *Gate) EnterPartition(ctx context.Context, p Partition) error {
	if err := g.Enter(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		g.Exit()
		return err
	}
	if p.Name == "" {
		g.Exit()
		return ErrEmptyPartition
	}
	return nil
}

// Exit ends an operation Enter or EnterPartition admitted.
func (g *Gate) Exit() { g.active.Done() }

// Close refuses every later Enter and waits for the operations in flight.
// It reports whether this call closed the gate: false when it was already
// closed, in which case it does not wait.
func (g *Gate) Close() bool {
	g.mu.Lock()
	closed := g.closed.Swap(true)
	g.mu.Unlock()
	if closed {
		return false
	}
	g.active.Wait()
	return true
}

// Closing reports whether Close has begun: a long operation stops early.
func (g *Gate) Closing() bool { return g.closed.Load() }
