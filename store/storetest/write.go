package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/dalvdb/dalv/store"
)

func testNothingApplied(t *testing.T, s store.Store) {
	// Each case runs on its own partition holding one commit, and must leave
	// it exactly so.
	for _, tc := range []struct {
		name string
		ctx  func() context.Context
		fn   func(r store.Reader) (*store.Commit, error)
		want error // nil: any error
	}{
		{
			name: "FnError",
			fn: func(r store.Reader) (*store.Commit, error) {
				return &store.Commit{Version: 2, Time: base, Entries: []store.Entry{{Key: "a", Value: []byte("x"), Version: 2}},
					Device: "d", Batch: 9}, errBoom
			},
			want: errBoom,
		},
		{
			name: "NilCommit",
			fn:   func(r store.Reader) (*store.Commit, error) { return nil, nil },
		},
		{
			name: "VersionSkipped",
			fn: func(r store.Reader) (*store.Commit, error) {
				return &store.Commit{Version: 3, Time: base, Entries: []store.Entry{{Key: "a", Value: []byte("x"), Version: 3}},
					Device: "d", Batch: 9}, nil
			},
		},
		{
			name: "VersionReused",
			fn: func(r store.Reader) (*store.Commit, error) {
				return &store.Commit{Version: 1, Time: base, Entries: []store.Entry{{Key: "a", Value: []byte("x"), Version: 1}},
					Device: "d", Batch: 9}, nil
			},
		},
		{
			name: "CanceledContext",
			ctx: func() context.Context {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx
			},
			fn: func(r store.Reader) (*store.Commit, error) {
				return &store.Commit{Version: 2, Time: base, Entries: []store.Entry{{Key: "a", Value: []byte("x"), Version: 2}},
					Device: "d", Batch: 9}, nil
			},
			want: context.Canceled,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := user(tc.name)
			commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "1")}, Device: "d", Batch: 1})
			ctx := context.Background()
			if tc.ctx != nil {
				ctx = tc.ctx()
			}
			err := s.Update(ctx, p, tc.fn)
			switch {
			case tc.name == "NilCommit" && err != nil:
				t.Fatalf("Update() = %v, want nil", err)
			case tc.name != "NilCommit" && err == nil:
				t.Fatalf("Update() = nil, want an error")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("Update() = %v, want %v", err, tc.want)
			}
			if got, want := head(t, s, p), (store.Head{Version: 1}); got != want {
				t.Errorf("Head() = %+v, want %+v", got, want)
			}
			if got, want := shows(changes(t, s, p, 0)), "a@1=1"; got != want {
				t.Errorf("Changes(0) = %s, want %s", got, want)
			}
			if got, want := deviceBatch(t, s, p, "d"), uint64(1); got != want {
				t.Errorf("DeviceBatch(d) = %d, want %d", got, want)
			}
			// The partition still takes the next commit.
			if got, want := commit(t, s, p, store.Commit{Entries: []store.Entry{put("b", "2")}}), uint64(2); got != want {
				t.Errorf("next commit got version %d, want %d", got, want)
			}
		})
	}
}

func testErase(t *testing.T, s store.Store) {
	p := user("alice")
	other := user("bob")
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "1"), put("b", "1")}, Device: "d1", Batch: 5})
	commit(t, s, p, store.Commit{Entries: []store.Entry{del("a")}, Device: "d2", Batch: 2})
	commit(t, s, other, store.Commit{Entries: []store.Entry{put("a", "bob")}})
	if got, want := commit(t, s, p, store.Commit{Erase: true, Entries: []store.Entry{put("c", "3")}, Device: "d1", Batch: 6}), uint64(3); got != want {
		t.Fatalf("erase commit got version %d, want %d", got, want)
	}
	if got, want := head(t, s, p), (store.Head{Version: 3, Horizon: 3}); got != want {
		t.Errorf("Head() after erase = %+v, want %+v", got, want)
	}
	for key, want := range map[string]string{"a": "none", "b": "none", "c": "c@3=3"} {
		if got := get(t, s, p, key); got != want {
			t.Errorf("Get(%q) after erase = %s, want %s", key, got, want)
		}
	}
	if got, want := shows(changes(t, s, p, 0)), "c@3=3"; got != want {
		t.Errorf("Changes(0) after erase = %s, want %s", got, want)
	}
	if got, want := shows(scan(t, s, p, "", "")), "c@3=3"; got != want {
		t.Errorf("Scan after erase = %s, want %s", got, want)
	}
	for device, want := range map[string]uint64{"d1": 6, "d2": 2} {
		if got := deviceBatch(t, s, p, device); got != want {
			t.Errorf("DeviceBatch(%q) after erase = %d, want %d", device, got, want)
		}
	}
	if got, want := get(t, s, other, "a"), "a@1=bob"; got != want {
		t.Errorf("other partition's Get(a) = %s, want %s", got, want)
	}

	// Versions go on; the horizon stays.
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "4"), del("c")}})
	if got, want := head(t, s, p), (store.Head{Version: 4, Horizon: 3}); got != want {
		t.Errorf("Head() after erase and commit = %+v, want %+v", got, want)
	}
	if got, want := shows(changes(t, s, p, 3)), "a@4=4 c@4(del)"; got != want {
		t.Errorf("Changes(3) = %s, want %s", got, want)
	}

	// An erase with no entries empties the partition.
	commit(t, s, p, store.Commit{Erase: true})
	if got, want := head(t, s, p), (store.Head{Version: 5, Horizon: 5}); got != want {
		t.Errorf("Head() after empty erase = %+v, want %+v", got, want)
	}
	if got := shows(changes(t, s, p, 0)); got != "" {
		t.Errorf("Changes(0) after empty erase = %s, want none", got)
	}
}

func testPartitionsSeparate(t *testing.T, s store.Store) {
	// Pairs that collide under a naive key encoding: the same name as user
	// and shared, a name that is another's prefix (with the key making up the
	// difference), and separators or NUL inside names.
	parts := []store.Partition{
		user("a"), shared("a"), user("ab"), shared("ab"), user("a\x00"), user("a\x00b"),
		user("a/b"), user("u"), user("s"), user("user:a"), shared("user:a"),
	}
	for i, p := range parts {
		commit(t, s, p, store.Commit{
			Entries: []store.Entry{put("k", p.String()), put("b", p.String()), put("bc", p.String())},
			Device:  "dev", Batch: uint64(i + 1),
		})
	}
	for i, p := range parts {
		want := fmt.Sprintf("b@1=%[1]s bc@1=%[1]s k@1=%[1]s", p)
		if got := shows(changes(t, s, p, 0)); got != want {
			t.Errorf("%s Changes(0) = %q, want %q", p, got, want)
		}
		if got := shows(scan(t, s, p, "", "")); got != want {
			t.Errorf("%s Scan = %q, want %q", p, got, want)
		}
		if got, want := head(t, s, p), (store.Head{Version: 1}); got != want {
			t.Errorf("%s Head() = %+v, want %+v", p, got, want)
		}
		if got, want := deviceBatch(t, s, p, "dev"), uint64(i+1); got != want {
			t.Errorf("%s DeviceBatch(dev) = %d, want %d", p, got, want)
		}
	}
	// Erasing one touches no other.
	commit(t, s, user("a"), store.Commit{Erase: true})
	for _, p := range parts[1:] {
		if got, want := get(t, s, p, "k"), "k@1="+p.String(); got != want {
			t.Errorf("%s Get(k) after erasing user a = %s, want %s", p, got, want)
		}
	}
}
