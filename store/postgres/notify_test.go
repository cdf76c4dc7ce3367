package postgres

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dalvdb/dalv/store"
)

// TestPayloadsCarryCommits checks what one notification says of a
// partition's commits: those that fit go along with their entries, in
// version order however they were added, and the rest by version, with the
// highest version always named last.
func TestPayloadsCarryCommits(t *testing.T) {
	t.Parallel()
	s := &Store{node: "n1"}
	a := &announcer{s: s, pending: make(map[string]*pendingPart)}
	commit := func(v uint64, entries ...store.Entry) *store.Commit {
		for i := range entries {
			entries[i].Version = v
		}
		return &store.Commit{Version: v, Entries: entries}
	}
	put := func(k, v string) store.Entry { return store.Entry{Key: k, Value: []byte(v), ScalarVersion: 1} }
	p := store.Partition{Name: "alice\nbob"}
	part := partID(p)
	three := commit(3, put("a", "x"), store.Entry{Key: "b", Deleted: true, ScalarVersion: 3})
	two := commit(2, put("c", "\x00\n+ y"))
	a.add(part, 3, three) // commits finish out of order
	a.add(part, 2, two)
	a.add(part, 4, &store.Commit{Version: 4, Erase: true})           // an erase goes by version
	a.add(part, 5, commit(5, put("big", strings.Repeat("v", 2000)))) // too large to carry
	a.add(part, 6, commit(6))                                        // no entries: carried, empty
	a.add(part, 7, nil)

	payloads := a.payloads(a.pending)
	if len(payloads) != 1 {
		t.Fatalf("%d payloads, want 1", len(payloads))
	}
	var got []store.Announcement
	(&Store{node: "n2"}).parsePayload(payloads[0], func(a store.Announcement) { got = append(got, a) })
	want := []store.Announcement{
		{Partition: p, Version: 2, Carried: true, Entries: two.Entries},
		{Partition: p, Version: 3, Carried: true, Entries: three.Entries},
		{Partition: p, Version: 6, Carried: true, Entries: []store.Entry{}},
		{Partition: p, Version: 7},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("announced\n%+v\nwant\n%+v", got, want)
	}
}

// TestParseCarriedRefuses checks that a "+" line that does not decode
// leaves its commit announced by version, and never announces anything
// else.
func TestParseCarriedRefuses(t *testing.T) {
	t.Parallel()
	good, ok := carryLine(&store.Commit{Version: 9, Entries: []store.Entry{{Key: "k", Value: []byte("v"), Version: 9}}}, 9)
	if !ok {
		t.Fatal("a one-entry commit is not carried")
	}
	for name, line := range map[string]string{
		"not base64":   "%%%",
		"cut short":    good[:len(good)-4],
		"extra bytes":  good + "AAAA",
		"empty":        "",
		"huge count":   "/////w8=",
		"bad flag":     "AQFrBwF2AA==",
		"huge key len": "Af////8PAA==",
	} {
		var got []store.Announcement
		(&Store{node: "n2"}).parsePayload("n1\n9 u:alice\n+"+line, func(a store.Announcement) { got = append(got, a) })
		want := []store.Announcement{{Partition: store.Partition{Name: "alice"}, Version: 9}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: announced %+v, want %+v", name, got, want)
		}
	}
}

// TestNotificationsCarryEntries commits through one store while another
// listens: the announcement it hears carries exactly the entries a read of
// the store finds at that version.
func TestNotificationsCarryEntries(t *testing.T) {
	t.Parallel()
	a, b := twoStores(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan store.Announcement, 100)
	listening := make(chan struct{}, 1)
	go func() {
		_ = b.Notifications(ctx, func(a store.Announcement) { got <- a }, func() { listening <- struct{}{} })
	}()
	select {
	case <-listening:
	case <-time.After(20 * time.Second):
		t.Fatal("Notifications did not call listening")
	}
	p := store.Partition{Name: "alice"}
	if _, err := commitOne(ctx, a, p, "first"); err != nil {
		t.Fatal(err)
	}
	v, err := commitOne(ctx, a, p, "second")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for {
		var n store.Announcement
		select {
		case n = <-got:
		case <-deadline:
			t.Fatalf("no announcement of %s at version %d", p, v)
		}
		if n.Version != v {
			continue
		}
		if !n.Carried {
			t.Fatalf("the commit at %d was announced by version alone", v)
		}
		var want []store.Entry
		err := b.View(ctx, p, func(r store.Reader) error {
			return r.Changes(v-1, func(e store.Entry) (bool, error) {
				want = append(want, e)
				return true, nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(n.Entries, want) {
			t.Errorf("carried %+v, the store holds %+v", n.Entries, want)
		}
		return
	}
}
