package server

import (
	"sync"
	"sync/atomic"

	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
)

// hub fans commits of this process out to the device watches of their
// partition, and wakes the backend feed readers. Delivery to a watch never
// blocks a commit: each watch has a bounded buffer, and a watch whose buffer
// is full is marked overflowed and ends with resource_exhausted; it resumes
// from its last version and loses nothing, because watches read any gap
// from the store. Notifications are hints for speed, never the record:
// correctness rests on the store.
type hub struct {
	mu    sync.RWMutex
	parts map[store.Partition]map[*subscription]struct{}

	feedMu      sync.Mutex
	feedSignal  chan struct{} // closed and replaced on every commit
	feedReaders atomic.Int32
}

// commitEvent is one commit as the hub passes it on; shared by every
// subscriber, never modified.
type commitEvent struct {
	version uint64
	changes []*dalvv1.Change
	erase   bool
	// unread marks a commit another process announced by its version
	// alone: it carries no changes, so watches read them from the store.
	unread bool
}

// subscription is one device watch's inbox.
type subscription struct {
	ch         chan *commitEvent
	overflowed chan struct{} // closed when ch was full
	once       sync.Once
}

// hasOverflowed reports whether the subscription's buffer overflowed.
func (sub *subscription) hasOverflowed() bool {
	select {
	case <-sub.overflowed:
		return true
	default:
		return false
	}
}

func newHub() *hub {
	return &hub{parts: make(map[store.Partition]map[*subscription]struct{}), feedSignal: make(chan struct{})}
}

// subscribe registers a watch of p with a buffer of n events.
func (h *hub) subscribe(p store.Partition, n int) *subscription {
	sub := &subscription{ch: make(chan *commitEvent, n), overflowed: make(chan struct{})}
	h.mu.Lock()
	m := h.parts[p]
	if m == nil {
		m = make(map[*subscription]struct{})
		h.parts[p] = m
	}
	m[sub] = struct{}{}
	h.mu.Unlock()
	return sub
}

func (h *hub) unsubscribe(p store.Partition, sub *subscription) {
	h.mu.Lock()
	if m := h.parts[p]; m != nil {
		delete(m, sub)
		if len(m) == 0 {
			delete(h.parts, p)
		}
	}
	h.mu.Unlock()
}

// publish hands a commit to p's watches and wakes the feed readers.
func (h *hub) publish(p store.Partition, ev *commitEvent) {
	h.mu.RLock()
	for sub := range h.parts[p] {
		select {
		case sub.ch <- ev:
		default:
			sub.once.Do(func() { close(sub.overflowed) })
		}
	}
	h.mu.RUnlock()
	if h.feedReaders.Load() > 0 {
		h.feedMu.Lock()
		close(h.feedSignal)
		h.feedSignal = make(chan struct{})
		h.feedMu.Unlock()
	}
}

// publishAnnounced hands a commit another process announced to the watches
// of its partition, as publish does, with its changes when the announcement
// carried its entries. They are decoded only when this process watches the
// partition: a listening process hears of every process's commits.
func (h *hub) publishAnnounced(a store.Announcement) {
	ev := &commitEvent{version: a.Version, unread: true}
	if a.Carried && h.watched(a.Partition) {
		if changes, err := engine.ChangesOf(a.Entries); err == nil {
			ev.changes, ev.unread = changes, false
		}
	}
	h.publish(a.Partition, ev)
}

// watched reports whether p has a watch in this process.
func (h *hub) watched(p store.Partition) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.parts[p]) > 0
}

// feedWait returns a channel closed at the next commit. Take it before
// reading the feed, so a commit between the read and the wait is not missed.
func (h *hub) feedWait() <-chan struct{} {
	h.feedMu.Lock()
	defer h.feedMu.Unlock()
	return h.feedSignal
}
