package server

import (
	"testing"

	"github.com/dalvdb/dalv/store"
)

// TestHubPublish checks that a commit reaches the watches of its partition
// and no others, in order, and none after a watch unsubscribes.
func TestHubPublish(t *testing.T) {
	t.Parallel()
	h := newHub()
	alice, bob := store.Partition{Name: "alice"}, store.Partition{Name: "bob"}
	a1, a2, b := h.subscribe(alice, 4), h.subscribe(alice, 4), h.subscribe(bob, 4)
	for v := uint64(1); v <= 2; v++ {
		h.publish(alice, &commitEvent{version: v})
	}
	for i, sub := range []*subscription{a1, a2} {
		for v := uint64(1); v <= 2; v++ {
			if ev := <-sub.ch; ev.version != v {
				t.Errorf("alice's watch %d got version %d, want %d", i+1, ev.version, v)
			}
		}
	}
	if n := len(b.ch); n != 0 {
		t.Errorf("bob's watch got %d of alice's commits", n)
	}
	h.unsubscribe(alice, a1)
	h.publish(alice, &commitEvent{version: 3})
	if n := len(a1.ch); n != 0 {
		t.Errorf("an unsubscribed watch got %d commits", n)
	}
	if ev := <-a2.ch; ev.version != 3 {
		t.Errorf("alice's other watch got version %d, want 3", ev.version)
	}
	h.unsubscribe(alice, a2)
	h.unsubscribe(bob, b)
	if n := len(h.parts); n != 0 {
		t.Errorf("the hub keeps %d partitions with no watches", n)
	}
}

// TestHubOverflow checks that a watch whose buffer is full is marked
// overflowed, keeps what it had, and that publishing never blocks on it.
func TestHubOverflow(t *testing.T) {
	t.Parallel()
	h := newHub()
	p := store.Partition{Name: "carol"}
	sub := h.subscribe(p, 1)
	for v := uint64(1); v <= 3; v++ {
		h.publish(p, &commitEvent{version: v})
	}
	select {
	case <-sub.overflowed:
	default:
		t.Fatal("a watch two commits past its buffer of one is not marked overflowed")
	}
	if ev := <-sub.ch; ev.version != 1 {
		t.Errorf("the overflowed watch holds version %d, want 1", ev.version)
	}
}

// TestHubFeedWait checks that a feed reader's wait ends at the next commit
// of any partition, and only then.
func TestHubFeedWait(t *testing.T) {
	t.Parallel()
	h := newHub()
	h.feedReaders.Add(1)
	wait := h.feedWait()
	select {
	case <-wait:
		t.Fatal("the feed wait ended before any commit")
	default:
	}
	h.publish(store.Partition{Name: "dan"}, &commitEvent{version: 1})
	select {
	case <-wait:
	default:
		t.Fatal("the feed wait did not end at a commit")
	}
	select {
	case <-h.feedWait():
		t.Fatal("a new feed wait ended before the next commit")
	default:
	}
}
