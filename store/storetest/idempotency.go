package storetest

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/dalvdb/dalv/store"
)

// idemKey reads the record of key in p, failing the test on error.
func idemKey(t *testing.T, s store.Store, p store.Partition, key string) (store.KeyRecord, bool) {
	t.Helper()
	var (
		rec store.KeyRecord
		ok  bool
	)
	view(t, s, p, func(r store.Reader) (err error) {
		rec, ok, err = r.IdempotencyKey(key)
		return err
	})
	return rec, ok
}

// wantKey checks that key's record in p is version with digest, or absent
// when version is 0.
func wantKey(t *testing.T, s store.Store, p store.Partition, key string, version uint64, digest string) {
	t.Helper()
	rec, ok := idemKey(t, s, p, key)
	switch {
	case version == 0 && ok:
		t.Errorf("%s IdempotencyKey(%q) = version %d, want none", p, key, rec.Version)
	case version == 0:
	case !ok:
		t.Errorf("%s IdempotencyKey(%q) = none, want version %d", p, key, version)
	case rec.Version != version || !bytes.Equal(rec.Digest, []byte(digest)):
		t.Errorf("%s IdempotencyKey(%q) = version %d digest %q, want version %d digest %q", p, key, rec.Version, rec.Digest, version, digest)
	}
}

func testIdempotencyKeys(t *testing.T, s store.Store) {
	p := user("alice")
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "1")}, IdempotencyKey: "k1", KeyDigest: []byte("d1")})
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("a", "2")}})
	commit(t, s, p, store.Commit{Entries: []store.Entry{put("b", "1")}, IdempotencyKey: "k2", KeyDigest: []byte("d2"), Device: "phone", Batch: 4})
	// The same key in other partitions is theirs alone.
	commit(t, s, user("bob"), store.Commit{Entries: []store.Entry{put("a", "1")}, IdempotencyKey: "k1", KeyDigest: []byte("bob")})
	commit(t, s, shared("alice"), store.Commit{Entries: []store.Entry{put("a", "1")}})
	commit(t, s, shared("alice"), store.Commit{Entries: []store.Entry{put("a", "2")}, IdempotencyKey: "k1", KeyDigest: []byte("shared")})

	wantKey(t, s, p, "k1", 1, "d1")
	wantKey(t, s, p, "k2", 3, "d2")
	wantKey(t, s, p, "k3", 0, "")
	wantKey(t, s, user("bob"), "k1", 1, "bob")
	wantKey(t, s, user("bob"), "k2", 0, "")
	wantKey(t, s, shared("alice"), "k1", 2, "shared")
	if got, want := deviceBatch(t, s, p, "phone"), uint64(4); got != want {
		t.Errorf("DeviceBatch(phone) = %d, want %d", got, want)
	}

	// Read in the Update that would record it, as the engine does.
	var rec store.KeyRecord
	var ok bool
	err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		var err error
		rec, ok, err = r.IdempotencyKey("k2")
		return nil, err
	})
	if err != nil || !ok || rec.Version != 3 {
		t.Errorf("IdempotencyKey(k2) in an Update = %d, %v, %v; want 3, true, nil", rec.Version, ok, err)
	}

	// A commit that fails records nothing.
	errFail := errors.New("fn failed")
	err = s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		return &store.Commit{Version: 4, Time: base, Entries: []store.Entry{{Key: "c", Value: []byte("x"), Version: 4, ScalarVersion: 4}},
			IdempotencyKey: "k3", KeyDigest: []byte("d3")}, errFail
	})
	if !errors.Is(err, errFail) {
		t.Fatalf("Update = %v, want %v", err, errFail)
	}
	wantKey(t, s, p, "k3", 0, "")

	// An empty digest, and a key of every printable byte, round-trip.
	long := make([]byte, 0, 128)
	for c := byte(0x20); len(long) < 128; c++ {
		if c > 0x7e {
			c = 0x20
		}
		long = append(long, c)
	}
	v := commit(t, s, p, store.Commit{Entries: []store.Entry{put("c", "1")}, IdempotencyKey: string(long)})
	wantKey(t, s, p, string(long), v, "")

	// An erase keeps the records: a commit retried after it is answered.
	commit(t, s, p, store.Commit{Erase: true})
	wantKey(t, s, p, "k1", 1, "d1")
	wantKey(t, s, p, "k2", 3, "d2")
}

func testCompactIdempotencyKeys(t *testing.T, s store.Store) {
	p, q := user("alice"), shared("catalog")
	commit(t, s, p, store.Commit{Time: minute(0), Entries: []store.Entry{put("a", "1")}, IdempotencyKey: "old", KeyDigest: []byte("d")})
	commit(t, s, q, store.Commit{Time: minute(1), Entries: []store.Entry{put("a", "1")}, IdempotencyKey: "old", KeyDigest: []byte("d")})
	commit(t, s, p, store.Commit{Time: minute(2), Entries: []store.Entry{put("a", "2")}, IdempotencyKey: "new", KeyDigest: []byte("d")})
	commit(t, s, q, store.Commit{Time: minute(3), Erase: true})

	if got, want := compact(t, s, minute(2)).Keys, 2; got != want {
		t.Errorf("Compact(minute 2).Keys = %d, want %d", got, want)
	}
	wantKey(t, s, p, "old", 0, "")
	wantKey(t, s, q, "old", 0, "")
	wantKey(t, s, p, "new", 2, "d")
	if got, want := compact(t, s, minute(2)).Keys, 0; got != want {
		t.Errorf("second Compact(minute 2).Keys = %d, want %d", got, want)
	}
	// A key retention dropped names a new commit.
	v := commit(t, s, p, store.Commit{Time: minute(5), Entries: []store.Entry{put("a", "3")}, IdempotencyKey: "old", KeyDigest: []byte("again")})
	wantKey(t, s, p, "old", v, "again")
	if got, want := compact(t, s, minute(5)).Keys, 1; got != want {
		t.Errorf("Compact(minute 5).Keys = %d, want %d", got, want)
	}
	wantKey(t, s, p, "old", v, "again")
	wantKey(t, s, p, "new", 0, "")
}
