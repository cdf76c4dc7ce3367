package store

import (
	"context"
	"time"
)

// FeedPos is a position in the change feed, opaque to everything but the
// store that gave it: callers never compare two, they give one back to Feed
// to read on from it. The empty FeedPos is before every record. Each store
// chooses its own bytes (the embedded store a sequence number, the
// PostgreSQL store a composite key, on Citus one sequence per shard), so a
// position is only ever given back to the store, or the kind of store,
// that gave it.
type FeedPos string

// FeedRecord is one commit in the change feed.
type FeedRecord struct {
	// Pos is the feed's position after the record: Feed(Pos) reads on
	// with the records this one comes before. Stable across restarts.
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
	// Feed calls fn for each record after the position after, in the
	// store's order, until fn returns false or an error, which Feed returns
	// as is. Reading on from a record's Pos gives exactly the records that
	// came after it, in the same order. It never passes a commit still in
	// flight, so a reader that resumes from the last record it saw never
	// skips one. If records after it may have been dropped by retention
	// (after is behind the horizon) it returns an error wrapping
	// ErrCompacted; for bytes that are no position of this store, one
	// wrapping ErrInvalidPos. It checks ctx between records.
	Feed(ctx context.Context, after FeedPos, fn func(FeedRecord) (bool, error)) error
	// FeedBounds returns the horizon (the position from which Feed reads
	// every record retention kept) and the last position: reading on from
	// it gives none of the records Feed could read when FeedBounds was
	// called.
	FeedBounds(ctx context.Context) (horizon, last FeedPos, err error)
}

// Notifier is implemented by stores that several server processes share.
// It reports commits made through any of them, so each process can wake its
// watches. Notifications may be lost, repeated, late or out of order:
// readers use them as hints, and read the store for whatever they were not
// told in order. What an announcement carries is what was committed.
type Notifier interface {
	// Notifications calls fn for each commit announced, until ctx is done
	// or the store closes. It reconnects by itself after failures. It calls
	// listening, when not nil, each time it starts to listen (at first and
	// after each reconnect): from then on, until the connection is lost
	// again, every commit that a read of the store begun after that call
	// does not see is announced to fn.
	Notifications(ctx context.Context, fn func(Announcement), listening func()) error
}

// Announcement is a commit another process made, as a [Notifier] reports
// it.
type Announcement struct {
	Partition Partition
	Version   uint64
	// Carried is set when Entries are the commit's Entries, every one: a
	// reader that holds the partition at Version-1 may take them instead
	// of reading the store. Otherwise the commit was announced by its
	// version alone (an erase, or one too large to carry).
	Carried bool
	Entries []Entry
}
