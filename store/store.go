// Package store defines the small transactional interface DalvDB's sync rules
// run on, and the types that cross it. A store keeps, per partition, the
// current state of every key (live or a tombstone) indexed by the version that
// last changed it, the partition's head (version and horizon), each device's
// last applied batch, and a log of commits for the change feed ([Feeder]).
//
// Erasing a partition (a [Commit] with Erase) leaves none of its data
// behind: entries, tombstones and every index that names its keys go, and so
// do its earlier commits in the change feed, in the erase's own atomic
// commit. Its head, its device records and the erase's own feed record stay.
//
// Stores know nothing of devices' rules, domains or conflicts: package engine
// decides what to write; a store makes it atomic, durable and serialised per
// partition. Every store passes the conformance suite in package storetest.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Partition names one partition: a user's own, or a shared one. A shared
// partition never equals a user partition of the same name.
type Partition struct {
	// Shared is true for a named shared partition, false for a user's.
	Shared bool
	// Name is the user id or the shared partition's name; never empty.
	Name string
}

// String renders the partition as "user:NAME" or "shared:NAME".
func (p Partition) String() string {
	if p.Shared {
		return "shared:" + p.Name
	}
	return "user:" + p.Name
}

// Head is a partition's counters. A partition never written has the zero Head.
type Head struct {
	// Version is the version of the partition's last commit; 0 for none.
	Version uint64
	// Horizon is the oldest base version from which Changes is complete:
	// tombstones of versions at or below it may have been dropped (by
	// retention, or by an erase, which sets it to the erase's version).
	Horizon uint64
}

// Entry is the stored state of one key.
type Entry struct {
	// Key is the key, 1 to 1024 bytes of UTF-8.
	Key string
	// Value is the value as encoded by package value; nil for a tombstone.
	Value []byte
	// Deleted marks a tombstone.
	Deleted bool
	// Version is the commit that last changed the key.
	Version uint64
	// ScalarVersion is the last commit that PUT or DELETEd the key (list
	// ops do not count); the conflict check for list ops reads it.
	ScalarVersion uint64
}

// Reader reads one partition, consistently: within one Update or View every
// call sees the same state. A Reader is valid only while the fn it was
// given to runs; a store may reuse it after.
type Reader interface {
	// Head returns the partition's version and horizon.
	Head() (Head, error)
	// Get returns the entry of key, tombstones included; ok is false when the
	// store holds nothing for key.
	Get(key string) (e Entry, ok bool, err error)
	// Changes calls fn for every entry, tombstones included, whose Version is
	// above after, in (Version, Key) order, until fn returns false or an error.
	Changes(after uint64, fn func(Entry) (bool, error)) error
	// Scan calls fn for every live entry (no tombstones) whose key starts
	// with prefix and sorts after startAfter, in key order, until fn returns
	// false or an error.
	Scan(prefix, startAfter string, fn func(Entry) (bool, error)) error
	// DeviceBatch returns the last batch recorded for device; 0 for none.
	DeviceBatch(device string) (uint64, error)
	// IdempotencyKey returns the record of the commit made under key; ok
	// is false when there is none (never made, or dropped by Compact).
	IdempotencyKey(key string) (rec KeyRecord, ok bool, err error)
}

// KeyRecord is what a store keeps of a commit made under an idempotency
// key (Commit.IdempotencyKey), so that a retry is answered, not applied.
type KeyRecord struct {
	// Version is the commit's version.
	Version uint64
	// Digest is the commit's Commit.KeyDigest, opaque to the store.
	Digest []byte
}

// Commit is one atomic change to a partition, built by package engine.
type Commit struct {
	// Version must be the partition's Head().Version + 1.
	Version uint64
	// Time is when the commit was made; retention compares it.
	Time time.Time
	// Erase drops every entry of the partition before Entries are written,
	// and sets the horizon to Version. It also drops the partition's earlier
	// feed records, so no trace of their ops remains: a feed reader that
	// had not reached them sees the erase's record instead. Device batch
	// records are kept, so a batch applied before an erase is never applied
	// again.
	Erase bool
	// Entries is the new state of each key the commit changes, one entry
	// a key; each has Version set to the commit's Version.
	Entries []Entry
	// Device and Batch, when Device is not empty, record Batch as the
	// device's last applied batch.
	Device string
	Batch  uint64
	// IdempotencyKey, when not empty, records the commit under this key
	// (with KeyDigest), to be read back by Reader.IdempotencyKey until
	// Compact passes the commit's Time. A key is recorded once per
	// partition: the caller reads it first, under the partition's lock. An
	// erase keeps the records, as it keeps device batches, so a commit
	// retried after an erase is never applied again.
	IdempotencyKey string
	// KeyDigest is kept with IdempotencyKey: the engine's digest of the
	// request, which holds no value in the clear.
	KeyDigest []byte
	// Ops is the commit's ops, opaque to the store, kept for the change feed.
	Ops []byte
}

// Check reports why c cannot follow a partition whose head is head, or nil
// when it can: its version must be the next, its time set, and each entry
// of its version, with a key, and the only one of its key. Every store
// checks a commit with it, under the partition's lock, before applying it.
func (c *Commit) Check(head Head) error {
	if c.Version != head.Version+1 {
		return fmt.Errorf("version must be %d", head.Version+1)
	}
	if c.Time.IsZero() {
		return errors.New("commit time is zero")
	}
	var keys map[string]bool // for long commits; short ones are scanned
	if len(c.Entries) > checkScanMax {
		keys = make(map[string]bool, len(c.Entries))
	}
	for i := range c.Entries {
		e := &c.Entries[i]
		if e.Version != c.Version {
			return fmt.Errorf("entry %q has version %d", e.Key, e.Version)
		}
		if e.Key == "" {
			return errors.New("entry with an empty key")
		}
		if keys == nil {
			for j := range i {
				if c.Entries[j].Key == e.Key {
					return fmt.Errorf("entry %q appears twice", e.Key)
				}
			}
		} else if keys[e.Key] {
			return fmt.Errorf("entry %q appears twice", e.Key)
		} else {
			keys[e.Key] = true
		}
	}
	return nil
}

// checkScanMax is the most entries a commit's Check compares pairwise for
// repeated keys; longer commits are checked with a map.
const checkScanMax = 16

// Store is a transactional, durable store of partitions, with a change feed
// of every commit.
type Store interface {
	// Feeder reads the change feed of every commit Update applies.
	Feeder
	// Update runs fn with the partition locked against every other Update of
	// it (across processes, for stores shared by several). When fn returns a
	// non-nil Commit and no error, the commit is applied atomically and is
	// durable before Update returns. fn may be called again if the store
	// has to retry; it must have no effects of its own besides its result.
	Update(ctx context.Context, p Partition, fn func(r Reader) (*Commit, error)) error
	// View runs fn on a consistent snapshot of the partition.
	View(ctx context.Context, p Partition, fn func(r Reader) error) error
	// Compact drops what retention no longer needs: tombstones, feed
	// records and idempotency key records of commits made before cutoff. A partition whose tombstones are
	// dropped has its horizon raised to the highest dropped version.
	Compact(ctx context.Context, cutoff time.Time) (CompactStats, error)
	// DiskBytes is the store's approximate size on disk.
	DiskBytes() int64
	// Close releases the store. Updates in flight finish first.
	Close() error
}

// Checker is implemented by a store that can stop keeping what it
// acknowledges while open: for good (the embedded store, after a write to
// its disk failed), or until its cause is mended (the PostgreSQL store on
// Citus while a node commits asynchronously). Healthy returns nil while
// the store serves, and otherwise the error, wrapping [ErrUnavailable],
// that its calls fail with.
type Checker interface {
	Healthy() error
}

// CompactStats says what one Compact dropped.
type CompactStats struct {
	// Tombstones is the number of tombstones dropped.
	Tombstones int
	// FeedRecords is the number of change-feed records dropped.
	FeedRecords int
	// Keys is the number of idempotency key records dropped.
	Keys int
}

// PrefixEnd returns the smallest byte string above every one that starts
// with prefix, or nil when there is none (prefix is empty or all 0xff): the
// exclusive end of a range scan over prefix.
func PrefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
