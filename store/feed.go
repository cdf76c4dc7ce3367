package store

import (
	"context"
	"time"
)

// FeedPos is a position in the change feed, opaque to readers: positions
// compare bytewise (as strings), a later record's is greater, and the empty
// FeedPos is before every record. Each store chooses its own bytes (the
// embedded store a sequence number, a shared one a composite key), so a
// position is only ever given back to the store, or the kind of store, that
// gave it.
type FeedPos string

// FeedRecord is one commit in the change feed.
type FeedRecord struct {
	// Pos is the record's position in the feed: increasing in commit order
	// per partition. Stable across restarts.
	Pos FeedPos
	// Partition, Version and Time are the commit's.
	Partition Partition
	Version   uint64
	Time      time.Time
	// Erase marks a commit that erased the partition.
	Erase bool
	// Ops is the Commit's Ops, as given.
	Ops []byte
}

// Feeder reads the change feed: every commit of every partition, in an
// order that keeps each partition's commits in version order. A commit's
// record stays in the feed until Compact drops it (retention) or an erase
// of its partition does (see [Commit].Erase).
type Feeder interface {
	// Feed calls fn for each record with Pos above after, in Pos order,
	// until fn returns false or an error, which Feed returns as is. It
	// never passes a position that a commit still in flight may take, so a
	// reader that resumes after the last record it saw never skips one. If
	// records above after may have been dropped by retention (after is below
	// the horizon) it returns an error wrapping ErrCompacted; for bytes that
	// are no position of this store, one wrapping ErrInvalidPos. It checks
	// ctx between records.
	Feed(ctx context.Context, after FeedPos, fn func(FeedRecord) (bool, error)) error
	// FeedBounds returns the horizon (records at or below it may have been
	// dropped by retention) and the last position a Feed call may now
	// return, at or above the horizon.
	FeedBounds(ctx context.Context) (horizon, last FeedPos, err error)
}

// Notifier is implemented by stores that several server processes share.
// It reports commits made through any of them, so each process can wake its
// watches. Notifications may be lost, repeated, late or out of order:
// readers use them only as hints and read the store for the truth.
type Notifier interface {
	// Notifications calls fn for each commit announced, until ctx is done
	// or the store closes. It reconnects by itself after failures.
	Notifications(ctx context.Context, fn func(p Partition, version uint64)) error
}
