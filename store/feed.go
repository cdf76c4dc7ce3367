package store

import (
	"context"
	"time"
)

// FeedRecord is one commit in the change feed.
type FeedRecord struct {
	// Seq is the record's position in the feed: increasing in commit order
	// per partition, with gaps. Stable across restarts.
	Seq uint64
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
	// Feed calls fn for each record with Seq above after, in Seq order,
	// until fn returns false or an error, which Feed returns as is. It
	// never passes a seq that may still be committed, so a reader that
	// resumes after the last record it saw never skips one. If records above
	// after may have been dropped by retention (after is below the horizon)
	// it returns an error wrapping ErrCompacted. It checks ctx between
	// records.
	Feed(ctx context.Context, after uint64, fn func(FeedRecord) (bool, error)) error
	// FeedBounds returns the horizon (records at or below it may have been
	// dropped by retention) and the last seq a Feed call may now return.
	FeedBounds(ctx context.Context) (horizon, last uint64, err error)
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
