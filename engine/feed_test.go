package engine

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
)

func TestCursorRoundTrip(t *testing.T) {
	t.Parallel()
	for _, pos := range []store.FeedPos{"", "\x00", "\x00\x00\x00\x00\x00\x00\x00\x2a", "\xff\xfe composite/key", store.FeedPos(strings.Repeat("p", 300))} {
		c := encodeCursor(pos)
		if c == StartCursor || c == "" {
			t.Errorf("encodeCursor(%q) = %q, a token of its own", pos, c)
		}
		got, err := decodeCursor(c)
		if err != nil || got != pos {
			t.Errorf("decodeCursor(encodeCursor(%q)) = %q, %v; want it back", pos, got, err)
		}
	}
}

func TestDecodeCursorGarbage(t *testing.T) {
	t.Parallel()
	for _, c := range []string{
		"",
		StartCursor,
		"not base64!",
		"AQ==", // padded
		base64.RawURLEncoding.EncodeToString(nil),
		base64.RawURLEncoding.EncodeToString([]byte{2, 0, 0, 0, 0, 0, 0, 0, 1}), // another format
		base64.RawStdEncoding.EncodeToString([]byte{1, 0xfb, 0xff}),             // standard alphabet
	} {
		pos, err := decodeCursor(c)
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("decodeCursor(%q) = %q, %v; want %v", c, pos, err, ErrInvalid)
			continue
		}
		if !strings.Contains(err.Error(), "not one this feed gave") {
			t.Errorf("decodeCursor(%q) error %q does not say what is wrong", c, err)
		}
	}
}

// FuzzDecodeCursor feeds arbitrary strings to the cursor decoder: it never
// panics, refuses with ErrInvalid only, and whatever it accepts encodes
// back to a cursor that decodes to the same position.
func FuzzDecodeCursor(f *testing.F) {
	f.Add("")
	f.Add(StartCursor)
	f.Add(encodeCursor("\x00\x00\x00\x00\x00\x00\x00\x07"))
	f.Add(encodeCursor("\xff composite"))
	f.Add("AQ")
	f.Add("Ag")
	f.Add("AQ==")
	f.Add("!!!")
	f.Fuzz(func(t *testing.T, c string) {
		pos, err := decodeCursor(c)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("decodeCursor(%q) error %v is not ErrInvalid", c, err)
			}
			return
		}
		got, err := decodeCursor(encodeCursor(pos))
		if err != nil || got != pos {
			t.Fatalf("decodeCursor(%q) = %q, which does not survive a round trip: %q, %v", c, pos, got, err)
		}
	})
}

// readFeed reads f to the end of the feed for now and returns its items.
func readFeed(t *testing.T, f *FeedReader) []FeedItem {
	t.Helper()
	var all []FeedItem
	for {
		page, full, err := f.Next(context.Background())
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		all = append(all, page...)
		if !full {
			return all
		}
	}
}

// show renders the kept events of items as "user@version:key,key", an
// erase as "user@version:erased".
func show(items []FeedItem) string {
	var out []string
	for _, it := range items {
		ev := it.Event
		if ev == nil {
			continue
		}
		if ev.GetCursor() != it.Cursor {
			return fmt.Sprintf("event cursor %q is not its item's %q", ev.GetCursor(), it.Cursor)
		}
		keys := "erased"
		if !ev.GetErased() {
			var ks []string
			for _, op := range ev.GetOps() {
				ks = append(ks, op.GetKey())
			}
			keys = strings.Join(ks, ",")
		}
		out = append(out, fmt.Sprintf("%s@%d:%s", ev.GetUser(), ev.GetVersion(), keys))
	}
	return strings.Join(out, " ")
}

func openFeed(t *testing.T, e *Engine, cursor string, prefixes ...string) *FeedReader {
	t.Helper()
	f, err := e.OpenFeed(context.Background(), cursor, prefixes, 0)
	if err != nil {
		t.Fatalf("OpenFeed(%q, %q): %v", cursor, prefixes, err)
	}
	return f
}

func TestFeedCursors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e, _ := newEngine(t, Limits{})
	alice, bob := user("alice"), user("bob")
	mustCommit(t, e, alice, putOp("a", "1"))
	mustCommit(t, e, bob, putOp("b", "1"))

	now := openFeed(t, e, "")
	all := readFeed(t, openFeed(t, e, StartCursor))
	if got, want := show(all), "alice@1:a bob@1:b"; got != want {
		t.Fatalf("feed from %q = %s, want %s", StartCursor, got, want)
	}
	mustCommit(t, e, alice, putOp("c", "2"))
	if got, want := show(readFeed(t, now)), "alice@2:c"; got != want {
		t.Errorf("feed from now (empty cursor) = %s, want %s", got, want)
	}
	if got, want := now.Cursor(), readFeed(t, openFeed(t, e, StartCursor))[2].Cursor; got != want {
		t.Errorf("Cursor() after reading = %q, want the last record's %q", got, want)
	}
	// Each delivered cursor resumes after its record.
	for i, it := range all {
		want := "alice@2:c"
		if i == 0 {
			want = "bob@1:b " + want
		}
		if got := show(readFeed(t, openFeed(t, e, it.Cursor))); got != want {
			t.Errorf("feed from the cursor of record %d = %s, want %s", i, got, want)
		}
	}

	// Cursors the feed never gave are invalid, before anything is read.
	for _, c := range []string{"garbage!", encodeCursor("not a position of this store")} {
		if _, err := e.OpenFeed(ctx, c, nil, 0); !errors.Is(err, ErrInvalid) {
			t.Errorf("OpenFeed(%q) = %v, want %v", c, err, ErrInvalid)
		}
	}
}

func TestFeedCompacted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e, clk := newEngine(t, Limits{})
	alice := user("alice")
	mustCommit(t, e, alice, putOp("a", "1"))
	mustCommit(t, e, alice, putOp("a", "2"))
	old := readFeed(t, openFeed(t, e, StartCursor))
	behind := openFeed(t, e, StartCursor)
	clk.Add(time.Hour)
	mustCommit(t, e, alice, putOp("a", "3"))
	if _, err := e.Compact(ctx, time.Minute); err != nil {
		t.Fatalf("Compact: %v", err)
	}

	for i, it := range old[:1] {
		_, err := e.OpenFeed(ctx, it.Cursor, nil, 0)
		if !errors.Is(err, ErrOutOfRange) {
			t.Errorf("OpenFeed(cursor of compacted record %d) = %v, want %v", i, err, ErrOutOfRange)
		} else if !strings.Contains(err.Error(), StartCursor) {
			t.Errorf("OpenFeed(cursor of compacted record %d) error %q does not say where to start again", i, err)
		}
	}
	// A reader opened before the compaction finds out on its next page.
	if _, _, err := behind.Next(ctx); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Next() of a reader behind the horizon = %v, want %v", err, ErrOutOfRange)
	}
	// From the start is what is left.
	if got, want := show(readFeed(t, openFeed(t, e, StartCursor))), "alice@3:a"; got != want {
		t.Errorf("feed from %q after Compact = %s, want %s", StartCursor, got, want)
	}
}

func TestFeedPrefixes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e, _ := newEngine(t, Limits{})
	alice, bob, carol := user("alice"), user("bob"), user("carol")
	mustCommit(t, e, alice, putOp("cart/1", "x"), putOp("prefs/theme", "dark"))
	mustCommit(t, e, alice, putOp("prefs/lang", "fr"))
	mustCommit(t, e, carol, putOp("cart/9", "z"))
	mustCommit(t, e, bob, putOp("orders/7", "y"), delOp("cart/2"))
	// The erase takes carol's earlier record out of the feed.
	if _, err := e.DeletePartition(ctx, carol); err != nil {
		t.Fatalf("DeletePartition: %v", err)
	}

	for _, tt := range []struct {
		prefixes []string
		want     string
	}{
		{nil, "alice@1:cart/1,prefs/theme alice@2:prefs/lang bob@1:orders/7,cart/2 carol@2:erased"},
		{[]string{"cart/"}, "alice@1:cart/1 bob@1:cart/2 carol@2:erased"},
		{[]string{"prefs/", "orders/"}, "alice@1:prefs/theme alice@2:prefs/lang bob@1:orders/7 carol@2:erased"},
		{[]string{"none/"}, "carol@2:erased"},
	} {
		items := readFeed(t, openFeed(t, e, StartCursor, tt.prefixes...))
		if got := show(items); got != tt.want {
			t.Errorf("feed with prefixes %q = %s, want %s", tt.prefixes, got, tt.want)
		}
		// Records left out still move the cursor on.
		if got, want := len(items), 4; got != want {
			t.Errorf("feed with prefixes %q gave %d items, want one per record, %d", tt.prefixes, got, want)
		}
	}
	for _, bad := range [][]string{{""}, {"ok/", "bad\x00"}} {
		if _, err := e.OpenFeed(ctx, StartCursor, bad, 0); !errors.Is(err, ErrInvalid) {
			t.Errorf("OpenFeed with prefixes %q = %v, want %v", bad, err, ErrInvalid)
		}
	}
}

func TestFeedPageBounds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e, _ := newEngine(t, Limits{})
	alice := user("alice")
	const n = feedBatch + 3
	for i := range n {
		mustCommit(t, e, alice, putOp(fmt.Sprint("k", i), "v"))
	}
	for _, tt := range []struct {
		pageBytes int
		pages     []int // records per page, the last one not full
	}{
		{0, []int{feedBatch, 3}},
		{1, append(slices.Repeat([]int{1}, n), 0)},
	} {
		f, err := e.OpenFeed(ctx, StartCursor, nil, tt.pageBytes)
		if err != nil {
			t.Fatalf("OpenFeed: %v", err)
		}
		var got []int
		for range n + 2 {
			page, full, err := f.Next(ctx)
			if err != nil {
				t.Fatalf("Next: %v", err)
			}
			got = append(got, len(page))
			if !full {
				break
			}
		}
		if !slices.Equal(got, tt.pages) {
			t.Errorf("pageBytes %d: pages of %v records, want %v", tt.pageBytes, got, tt.pages)
		}
	}
}

func TestValidatePrefixes(t *testing.T) {
	t.Parallel()
	l := Limits{MaxOps: 2, MaxKeyBytes: 8}.WithDefaults()
	for _, tt := range []struct {
		prefixes []string
		want     error
	}{
		{nil, nil},
		{[]string{"a/", "b"}, nil},
		{[]string{"a", "b", "c"}, ErrLimit},
		{[]string{""}, ErrInvalid},
		{[]string{"tab\t"}, ErrInvalid},
		{[]string{"123456789"}, ErrLimit},
	} {
		if err := ValidatePrefixes(tt.prefixes, l); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
			t.Errorf("ValidatePrefixes(%q) = %v, want %v", tt.prefixes, err, tt.want)
		}
	}
}

func TestFilterChanges(t *testing.T) {
	t.Parallel()
	changes := []*dalvv1.Change{{Key: "a/1"}, {Key: "b/1"}, {Key: "a/2"}, {Key: "ab"}}
	keys := func(cs []*dalvv1.Change) (ks []string) {
		for _, c := range cs {
			ks = append(ks, c.GetKey())
		}
		return ks
	}
	tests := map[string][]string{ // prefixes, space-separated: the keys kept
		"":     {"a/1", "b/1", "a/2", "ab"},
		"a/":   {"a/1", "a/2"},
		"b/ a": {"a/1", "b/1", "a/2", "ab"},
		"c/":   nil,
	}
	for prefixes, want := range tests {
		if got := keys(FilterChanges(changes, strings.Fields(prefixes))); !slices.Equal(got, want) {
			t.Errorf("FilterChanges(%q) = %q, want %q", strings.Fields(prefixes), got, want)
		}
	}
	if got, want := keys(changes), []string{"a/1", "b/1", "a/2", "ab"}; !slices.Equal(got, want) {
		t.Errorf("FilterChanges modified its input: %q, want %q", got, want)
	}
}
