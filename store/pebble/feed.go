package pebble

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/dalvdb/dalv/store"
)

// feedSeqs hands out the store-global sequence numbers of feed records, and
// knows which are still in flight: allocated but not yet committed (or
// abandoned). Seqs are allocated under the partition lock, so one
// partition's records are in version order, but commits of different
// partitions finish in any order: a feed reader must not pass a seq that is
// still in flight, or it could skip it for good.
type feedSeqs struct {
	mu      sync.Mutex
	next    uint64   // the next seq to hand out
	pending []uint64 // allocated and not done, ascending
}

// alloc allocates the next seq. The caller must call done with it.
func (f *feedSeqs) alloc() uint64 {
	f.mu.Lock()
	seq := f.next
	f.next++
	f.pending = append(f.pending, seq)
	f.mu.Unlock()
	return seq
}

// done marks seq committed or abandoned.
func (f *feedSeqs) done(seq uint64) {
	f.mu.Lock()
	if i, ok := slices.BinarySearch(f.pending, seq); ok {
		f.pending = slices.Delete(f.pending, i, i+1)
	}
	f.mu.Unlock()
}

// visible is the highest seq at or below which no seq is in flight: every
// feed record up to it is in the store or will never be.
func (f *feedSeqs) visible() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pending) > 0 {
		return f.pending[0] - 1
	}
	return f.next - 1
}

// Feed implements [store.Feeder]: the records above after, up to the last
// seq with none in flight below it, in seq order. A position is a seq as 8
// big-endian bytes (see seqPos).
func (s *Store) Feed(ctx context.Context, after store.FeedPos, fn func(store.FeedRecord) (bool, error)) error {
	seq, err := posSeq(after)
	if err != nil {
		return err
	}
	return s.readFeed(ctx, seq, func(seq uint64, r feedRecord) (bool, error) {
		return fn(store.FeedRecord{
			Pos:       seqPos(seq),
			Partition: r.Partition,
			Version:   r.Version,
			Time:      r.Time(),
			Erase:     r.Erase,
			Ops:       r.Ops,
		})
	})
}

// FeedBounds implements [store.Feeder]. The horizon is the highest seq
// Compact dropped; last is the highest seq with none in flight at or below
// it. The horizon is read first: it never passes the visible seq, so
// horizon <= last.
func (s *Store) FeedBounds(ctx context.Context) (horizon, last store.FeedPos, err error) {
	if err := s.enter(); err != nil {
		return "", "", err
	}
	defer s.gate.Exit()
	if err := ctx.Err(); err != nil {
		return "", "", err
	}
	floor := s.feedFloor.Load()
	return seqPos(floor), seqPos(s.feed.visible()), nil
}

// seqPos is the feed position of seq: 8 big-endian bytes, so positions
// order as seqs do; seq 0, before every record, is the empty position.
func seqPos(seq uint64) store.FeedPos {
	if seq == 0 {
		return ""
	}
	return store.FeedPos(binary.BigEndian.AppendUint64(nil, seq))
}

// posSeq is the inverse of seqPos.
func posSeq(pos store.FeedPos) (uint64, error) {
	switch len(pos) {
	case 0:
		return 0, nil
	case 8:
		return binary.BigEndian.Uint64([]byte(pos)), nil
	}
	return 0, fmt.Errorf("feed position %x: %w", string(pos), store.ErrInvalidPos)
}

// readFeed calls fn for every feed record with a seq above after and at most
// the visible seq, in seq order, until fn returns false or an error, or ctx
// is done. Seqs have gaps (abandoned commits, erased and dropped records).
// It fails with store.ErrCompacted when after is below the feed floor.
func (s *Store) readFeed(ctx context.Context, after uint64, fn func(seq uint64, r feedRecord) (bool, error)) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.gate.Exit()
	if err := ctx.Err(); err != nil {
		return err
	}
	upTo := s.feed.visible()
	if after >= upTo {
		return nil // and not compacted: the floor never passes the visible seq
	}
	it, err := s.db.NewIter(&pebbledb.IterOptions{LowerBound: feedKey(after + 1), UpperBound: feedKey(upTo + 1)})
	if err != nil {
		return fmt.Errorf("read feed: %w", err)
	}
	// After the iterator is open: a drop it does not see raised the floor
	// first, and one it does see is caught here.
	if floor := s.feedFloor.Load(); after < floor {
		return closeIter(fmt.Errorf("read feed after %d, below the horizon %d: %w", after, floor, store.ErrCompacted), it)
	}
	for valid := it.First(); valid; valid = it.Next() {
		if err := ctx.Err(); err != nil {
			return closeIter(err, it)
		}
		seq, err := decodeFeedKey(it.Key())
		if err != nil {
			return closeIter(err, it)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return closeIter(fmt.Errorf("read feed %d: %w", seq, pebbleErr(err)), it)
		}
		r, err := decodeFeedRecord(v)
		if err != nil {
			return closeIter(fmt.Errorf("read feed %d: %w", seq, err), it)
		}
		if more, err := fn(seq, r); err != nil || !more {
			return closeIter(err, it)
		}
	}
	return closeIter(nil, it)
}
