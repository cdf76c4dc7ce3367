package pebble

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	pebbledb "github.com/cockroachdb/pebble/v2"
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

// readFeed calls fn for every feed record with a seq above after and at most
// the visible seq, in seq order, until fn returns false or an error. Seqs
// have gaps (abandoned commits, dropped records).
func (s *Store) readFeed(after uint64, fn func(seq uint64, r feedRecord) (bool, error)) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.active.Done()
	upTo := s.feed.visible()
	if after >= upTo {
		return nil
	}
	it, err := s.db.NewIter(&pebbledb.IterOptions{LowerBound: feedKey(after + 1), UpperBound: feedKey(upTo + 1)})
	if err != nil {
		return fmt.Errorf("read feed: %w", err)
	}
	for valid := it.First(); valid; valid = it.Next() {
		seq, err := decodeFeedKey(it.Key())
		if err != nil {
			return errors.Join(err, it.Close())
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return errors.Join(fmt.Errorf("read feed %d: %w", seq, err), it.Close())
		}
		r, err := decodeFeedRecord(v)
		if err != nil {
			return errors.Join(fmt.Errorf("read feed %d: %w", seq, err), it.Close())
		}
		more, err := fn(seq, r)
		if err != nil || !more {
			return errors.Join(err, it.Close())
		}
	}
	return it.Close()
}
