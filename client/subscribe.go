package client

import (
	"strings"
	"sync"
)

// Change is one change to what the device sees of a key.
type Change struct {
	// Partition is empty for the user's own partition, else the shared
	// partition's name.
	Partition string
	// Key is the key that changed.
	Key string
	// Value is what the key holds now; nil when it was deleted.
	Value *Value
	// Remote is set when the change came from the server (a sync or the
	// watch), clear for the device's own writes and their undoing (a
	// resolved conflict, a refused batch).
	Remote bool
	// Overflow marks a change that stands for changes dropped: the
	// subscriber fell more than [Options.MaxSubscriberQueue] changes behind,
	// so its queue was emptied. Key is the subscription's prefix and Value
	// nil; the subscriber should read everything under the prefix again.
	// The changes queued after it follow as usual.
	Overflow bool
}

// subscription delivers changes to one callback, in order, from its own
// goroutine, so a slow callback never holds up writers.
type subscription struct {
	part, prefix string
	fn           func(Change)

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []Change // at most max changes
	max    int
	closed bool
	done   chan struct{}
}

// Subscribe calls fn with every change to a key under prefix in the user's
// partition (an empty prefix for all keys), local or remote, in the order
// the replica applied them, until cancel is called or the replica closes.
// Calls come from one goroutine of the subscription's own; changes are
// queued while fn runs, so fn may take its time, and may read the replica.
// The queue holds at most [Options.MaxSubscriberQueue] changes: a change
// that would pass it empties the queue and queues one [Change] with
// Overflow set in their place, after which fn should read the prefix again.
func (r *Replica) Subscribe(prefix string, fn func(Change)) (cancel func()) {
	return r.subscribe("", prefix, fn)
}

func (r *Replica) subscribe(part, prefix string, fn func(Change)) func() {
	s := &subscription{part: part, prefix: prefix, fn: fn, max: r.opts.MaxSubscriberQueue, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	r.subsMu.Lock()
	if r.subs == nil { // closed
		r.subsMu.Unlock()
		close(s.done)
		return func() {}
	}
	r.subs[s] = struct{}{}
	r.subsMu.Unlock()
	go s.run()
	return func() {
		r.subsMu.Lock()
		if r.subs != nil {
			delete(r.subs, s)
		}
		r.subsMu.Unlock()
		s.close()
	}
}

func (s *subscription) run() {
	defer close(s.done)
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.closed {
			s.cond.Wait()
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		batch := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, c := range batch {
			s.fn(c)
		}
	}
}

func (s *subscription) close() {
	s.mu.Lock()
	s.closed = true
	s.queue = nil
	s.mu.Unlock()
	s.cond.Signal()
}

// emit queues changes for the subscriptions whose prefix they fall under.
// Writers call it while they still hold wmu, so subscribers see changes in
// the order they were applied.
func (r *Replica) emit(changes []Change) {
	if len(changes) == 0 {
		return
	}
	r.subsMu.Lock()
	defer r.subsMu.Unlock()
	for s := range r.subs {
		var mine []Change
		for _, c := range changes {
			if c.Partition == s.part && strings.HasPrefix(c.Key, s.prefix) {
				mine = append(mine, c)
			}
		}
		if len(mine) == 0 {
			continue
		}
		s.push(mine)
	}
}

// push queues changes, or, when they would take the queue past its bound,
// replaces everything queued with one overflow mark.
func (s *subscription) push(changes []Change) {
	s.mu.Lock()
	switch {
	case s.closed:
	case len(s.queue)+len(changes) > s.max:
		s.queue = append(s.queue[:0], Change{Partition: s.part, Key: s.prefix, Overflow: true})
	default:
		s.queue = append(s.queue, changes...)
	}
	s.mu.Unlock()
	s.cond.Signal()
}

// closeSubs ends every subscription.
func (r *Replica) closeSubs() {
	r.subsMu.Lock()
	subs := r.subs
	r.subs = nil
	r.subsMu.Unlock()
	for s := range subs {
		s.close()
	}
}
