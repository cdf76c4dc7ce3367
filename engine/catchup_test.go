package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
)

// page is what a test keeps of a catch-up page.
type page struct {
	version     uint64
	reset, more bool
	keys        []string
}

func catchUp(t *testing.T, e *Engine, from uint64, prefixes []string, pageBytes int) []page {
	t.Helper()
	var pages []page
	err := e.CatchUp(context.Background(), nil, user("alice"), from, prefixes, pageBytes, func(p *dalvv1.SyncResponse) error {
		if len(pages) > 100 {
			return errors.New("more than 100 pages: the catch-up does not advance")
		}
		var keys []string
		for _, c := range p.GetChanges() {
			keys = append(keys, c.GetKey())
		}
		pages = append(pages, page{p.GetVersion(), p.GetReset_(), p.GetMore(), keys})
		return nil
	})
	if err != nil {
		t.Fatalf("CatchUp(from %d): %v", from, err)
	}
	return pages
}

// TestCatchUpAcrossReset catches up from below the horizon in pages of one
// commit: the reset goes on across pages (each page echoes the horizon), so
// the pages together hold each live key once, no tombstone, and end at the
// head.
func TestCatchUpAcrossReset(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e, clk := newEngine(t, Limits{})
	alice := user("alice")
	const n = 6
	for i := range n {
		mustCommit(t, e, alice, putOp(fmt.Sprint("k", i), "v"))
	}
	mustCommit(t, e, alice, delOp("k0")) // 7
	clk.Add(time.Hour)
	head := mustCommit(t, e, alice, putOp("k1", "w"), putOp("x/1", "v")) // 8
	if _, err := e.Compact(ctx, time.Minute); err != nil {
		t.Fatalf("Compact: %v", err)
	}

	for _, tt := range []struct {
		name     string
		prefixes []string
		want     map[string]bool
	}{
		{"all keys", nil, map[string]bool{"k1": true, "k2": true, "k3": true, "k4": true, "k5": true, "x/1": true}},
		{"prefix", []string{"x/"}, map[string]bool{"x/1": true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pages := catchUp(t, e, 3, tt.prefixes, 1)
			if len(pages) < 2 {
				t.Fatalf("pages = %+v, want the reset cut into several", pages)
			}
			got := map[string]bool{}
			for i, p := range pages {
				if !p.reset {
					t.Errorf("page %d = %+v, want a reset page (the base is below the horizon)", i, p)
				}
				if last := i == len(pages)-1; p.more == last {
					t.Errorf("page %d of %d = %+v, more should be set on every page but the last", i, len(pages), p)
				}
				for _, k := range p.keys {
					if got[k] {
						t.Errorf("key %s in page %d again: the reset started over", k, i)
					}
					got[k] = true
				}
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("keys caught up = %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(tt.want)))
			}
			if last := pages[len(pages)-1]; last.version != head {
				t.Errorf("last page at version %d, want the head %d", last.version, head)
			}
		})
	}
}

func TestCatchUp(t *testing.T) {
	t.Parallel()
	e, _ := newEngine(t, Limits{})
	alice := user("alice")
	mustCommit(t, e, alice, putOp("a", "1"))
	mustCommit(t, e, alice, putOp("b", "1"), putOp("c", "1"))
	head := mustCommit(t, e, alice, delOp("a"))

	show := func(pages []page) string {
		var out []string
		for _, p := range pages {
			out = append(out, fmt.Sprintf("%d%s%s:%s", p.version, map[bool]string{true: "R"}[p.reset], map[bool]string{true: "+"}[p.more], strings.Join(p.keys, ",")))
		}
		return strings.Join(out, " ")
	}
	for _, tt := range []struct {
		from      uint64
		prefixes  []string
		pageBytes int
		want      string
	}{
		{head, nil, 0, ""}, // nothing new: no page
		{0, nil, 0, "3:b,c,a"},
		{1, nil, 1, "2+:b,c 3:a"},
		{1, []string{"c"}, 1, "2+:c 3:"},
		{2, []string{"b"}, 0, "3:"},
	} {
		if got := show(catchUp(t, e, tt.from, tt.prefixes, tt.pageBytes)); got != tt.want {
			t.Errorf("CatchUp(from %d, prefixes %q, pageBytes %d) = %q, want %q", tt.from, tt.prefixes, tt.pageBytes, got, tt.want)
		}
	}

	// fn's error ends the catch-up and is returned.
	stop := errors.New("stop")
	calls := 0
	err := e.CatchUp(context.Background(), nil, alice, 0, nil, 1, func(*dalvv1.SyncResponse) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("CatchUp with fn failing = %v after %d calls, want %v after 1", err, calls, stop)
	}
	// A version ahead of the partition is refused.
	if err := e.CatchUp(context.Background(), nil, alice, head+1, nil, 0, func(*dalvv1.SyncResponse) error { return nil }); !errors.Is(err, ErrInvalid) {
		t.Errorf("CatchUp from ahead of the head = %v, want %v", err, ErrInvalid)
	}
}

// TestCatchUpLeavesPagesAlone checks that a catch-up cut to prefixes hands
// fn its own copy of a page, and leaves the page pull returned, which may
// be shared with other watches, as it was.
func TestCatchUpLeavesPagesAlone(t *testing.T) {
	e, _ := newEngine(t, Limits{})
	shared := &dalvv1.SyncResponse{Version: 1, Changes: []*dalvv1.Change{{Key: "a/1", Version: 1}, {Key: "b/1", Version: 1}}}
	pull := func(context.Context, store.Partition, uint64, uint64, int) (*dalvv1.SyncResponse, error) {
		return shared, nil
	}
	var got []string
	err := e.CatchUp(context.Background(), pull, user("alice"), 0, []string{"a/"}, 0, func(p *dalvv1.SyncResponse) error {
		for _, c := range p.GetChanges() {
			got = append(got, c.GetKey())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"a/1"}) {
		t.Errorf("the watch of a/ got %q, want [a/1]", got)
	}
	if n := len(shared.GetChanges()); n != 2 {
		t.Errorf("the shared page holds %d changes after the catch-up, want its 2", n)
	}
}
