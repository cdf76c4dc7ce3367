package pebble

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/dalvdb/dalv/store"
)

// compactChunk is how many tombstone index items Compact reads before it
// applies them, bounding its memory.
const compactChunk = 4096

// tombItem is one tombstone index item.
type tombItem struct {
	indexKey []byte
	key      string
	version  uint64
}

// Compact implements [store.Store]. It walks the tombstone index up to
// cutoff and, under each partition's lock, drops the tombstones that are
// still the ones indexed; items of keys since rewritten or erased are just
// removed. Then it drops the oldest feed records while their commit time is
// before cutoff: the feed stays a contiguous run of seqs. Updates run on
// meanwhile; only the partition being compacted waits. Close stops it early,
// with store.ErrClosed and the counts so far.
func (s *Store) Compact(ctx context.Context, cutoff time.Time) (store.CompactStats, error) {
	var st store.CompactStats
	if err := s.enter(); err != nil {
		return st, err
	}
	defer s.gate.Exit()
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	if cutoff.Before(time.Unix(0, 1)) {
		return st, nil // nothing was committed before it: times are clamped at 0
	}
	cut := uint64(cutoff.UnixNano())
	wrote := false
	lower := []byte{kindTomb}
	upper := binary.BigEndian.AppendUint64([]byte{kindTomb}, cut)
	for lower != nil {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		var byPart map[store.Partition][]tombItem
		var err error
		byPart, lower, err = s.readTombs(lower, upper)
		if err != nil {
			return st, fmt.Errorf("compact: %w", err)
		}
		for p, items := range byPart {
			if err := ctx.Err(); err != nil {
				return st, err
			}
			if s.gate.Closing() {
				return st, store.ErrClosed
			}
			n, err := s.compactPartition(p, items)
			if err != nil {
				return st, fmt.Errorf("compact %s: %w", p, err)
			}
			st.Tombstones += n
			wrote = true
		}
	}
	keys, err := s.compactKeys(ctx, cut)
	st.Keys = keys
	if err != nil {
		if errors.Is(err, store.ErrClosed) || ctx.Err() != nil {
			return st, err
		}
		return st, fmt.Errorf("compact idempotency keys: %w", err)
	}
	wrote = wrote || keys > 0
	n, err := s.compactFeed(ctx, int64(cut))
	st.FeedRecords = n
	if err != nil {
		if errors.Is(err, store.ErrClosed) || ctx.Err() != nil {
			return st, err
		}
		return st, fmt.Errorf("compact feed: %w", err)
	}
	if wrote || n > 0 {
		// The batches above were not synced one by one; one sync makes them
		// all durable.
		if err := s.db.LogData(nil, pebbledb.Sync); err != nil {
			return st, fmt.Errorf("compact: sync: %w", err)
		}
	}
	return st, nil
}

// readTombs reads up to compactChunk tombstone index items from [lower,
// upper), grouped by partition, and returns where the next chunk starts (nil
// when done).
func (s *Store) readTombs(lower, upper []byte) (map[store.Partition][]tombItem, []byte, error) {
	it, err := s.db.NewIter(&pebbledb.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, nil, err
	}
	byPart := make(map[store.Partition][]tombItem)
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		if n == compactChunk {
			next := append([]byte(nil), it.Key()...)
			return byPart, next, closeIter(nil, it)
		}
		k := append([]byte(nil), it.Key()...)
		_, p, key, err := decodeTombKey(k)
		if err != nil {
			return nil, nil, closeIter(err, it)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, nil, closeIter(pebbleErr(err), it)
		}
		version, err := decodeUvarint(v)
		if err != nil {
			return nil, nil, closeIter(fmt.Errorf("tombstone index %x: %w", k, err), it)
		}
		byPart[p] = append(byPart[p], tombItem{indexKey: k, key: key, version: version})
		n++
	}
	return byPart, nil, closeIter(nil, it)
}

// compactPartition drops the tombstones of items that are still the indexed
// tombstone, removes all of items from the index, and raises the horizon to
// the highest version dropped. It returns how many tombstones it dropped.
func (s *Store) compactPartition(p store.Partition, items []tombItem) (int, error) {
	l := s.parts.lock(p)
	defer s.parts.unlock(p, l)
	r := newReader(s.db, p, false)
	defer r.release()
	head, err := r.Head()
	if err != nil {
		return 0, err
	}
	b := s.db.NewBatch()
	defer b.Close()
	dropped := 0
	var key []byte
	for _, item := range items {
		if err := b.Delete(item.indexKey, nil); err != nil {
			return 0, err
		}
		deleted, version, err := s.entryState(r, item.key)
		if err != nil {
			return 0, err
		}
		if !deleted || version != item.version {
			continue // rewritten since, or erased
		}
		key = appendKey(key[:0], kindEntry, r.pid, item.key)
		if err := b.Delete(key, nil); err != nil {
			return 0, err
		}
		key = appendVersionKey(key[:0], r.pid, version, item.key)
		if err := b.Delete(key, nil); err != nil {
			return 0, err
		}
		dropped++
		head.Horizon = max(head.Horizon, version)
	}
	if dropped > 0 {
		key = appendKey(key[:0], kindHead, r.pid, "")
		if err := b.Set(key, encodeHead(nil, head, r.feedSeq, r.headDevs), nil); err != nil {
			return 0, err
		}
	}
	if err := s.commit(b, pebbledb.NoSync); err != nil {
		s.heads.drop(p)
		return 0, err
	}
	if dropped > 0 {
		s.heads.put(p, head, r.feedSeq, r.headDevs)
	}
	return dropped, nil
}

// entryState reads whether key's entry is a tombstone, and its version;
// false for a key with no entry.
func (s *Store) entryState(r *reader, key string) (deleted bool, version uint64, err error) {
	r.scratch = appendKey(r.scratch[:0], kindEntry, r.pid, key)
	v, closer, err := s.db.Get(r.scratch)
	if errors.Is(err, pebbledb.ErrNotFound) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, pebbleErr(err)
	}
	h, _, err := decodeEntryHeader(v)
	if err = errors.Join(err, closer.Close()); err != nil {
		return false, 0, fmt.Errorf("entry %q: %w", key, err)
	}
	return h.deleted, h.version, nil
}

// compactFeed drops the feed records from the oldest on while their commit
// time is before cut, never past a seq still in flight, with the feed index
// keys of those written with one. Each chunk of compactChunk records goes in
// one batch that also records the highest seq dropped, so that it is never
// allocated again; the batches are not synced. It returns how many records
// it dropped.
func (s *Store) compactFeed(ctx context.Context, cut int64) (int, error) {
	upTo := s.feed.visible()
	it, err := s.db.NewIter(&pebbledb.IterOptions{LowerBound: []byte{kindFeed}, UpperBound: feedKey(upTo + 1)})
	if err != nil {
		return 0, err
	}
	b := s.db.NewBatch()
	defer b.Close()
	var first, last uint64
	var key, pid []byte
	n, chunk := 0, 0
	// flush drops the records first..last and their index keys, in b.
	flush := func() error {
		if chunk == 0 {
			return nil
		}
		if err := b.DeleteRange(feedKey(first), feedKey(last+1), nil); err != nil {
			return err
		}
		if err := b.Set(metaFeedFloor, binary.AppendUvarint(nil, last), nil); err != nil {
			return err
		}
		s.feedFloor.Store(last) // before the drop commits; see feedFloor
		if err := s.commit(b, pebbledb.NoSync); err != nil {
			return err
		}
		b.Reset()
		n += chunk
		chunk = 0
		return nil
	}
	for valid := it.First(); valid; valid = it.Next() {
		seq, err := decodeFeedKey(it.Key())
		if err != nil {
			return n, closeIter(err, it)
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return n, closeIter(pebbleErr(err), it)
		}
		nanos, err := decodeFeedTime(v)
		if err != nil {
			return n, closeIter(fmt.Errorf("record %d: %w", seq, err), it)
		}
		if nanos >= cut {
			break
		}
		r, _, err := decodeFeedHeader(v)
		if err != nil {
			return n, closeIter(fmt.Errorf("record %d: %w", seq, err), it)
		}
		if !r.Linked { // written with a feed index key
			pid = appendPartition(pid[:0], r.Partition)
			key = appendFeedIndexKey(key[:0], pid, seq)
			if err := b.Delete(key, nil); err != nil {
				return n, closeIter(err, it)
			}
		}
		if chunk == 0 {
			first = seq
		}
		last = seq
		chunk++
		if chunk == compactChunk {
			if err := flush(); err != nil {
				return n, closeIter(err, it)
			}
			if err := ctx.Err(); err != nil {
				return n, closeIter(err, it)
			}
			if s.gate.Closing() {
				return n, closeIter(store.ErrClosed, it)
			}
		}
	}
	if err := closeIter(nil, it); err != nil {
		return n, err
	}
	return n, flush()
}

// compactKeys drops the idempotency key records of commits made before cut,
// with their index items, compactChunk at a time in unsynced batches. It
// takes no partition lock: a record is written only when its key has none,
// and only compaction drops one, so no Update writes a record it drops.
func (s *Store) compactKeys(ctx context.Context, cut uint64) (int, error) {
	upper := binary.BigEndian.AppendUint64([]byte{kindIdemTime}, cut)
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if s.gate.Closing() {
			return n, store.ErrClosed
		}
		it, err := s.db.NewIter(&pebbledb.IterOptions{LowerBound: []byte{kindIdemTime}, UpperBound: upper})
		if err != nil {
			return n, err
		}
		b := s.db.NewBatch()
		chunk := 0
		var key []byte
		for valid := it.First(); valid && chunk < compactChunk; valid = it.Next() {
			pid, idem, err := decodeIdemTimeKey(it.Key())
			if err == nil {
				err = b.Delete(it.Key(), nil)
			}
			if err == nil {
				key = appendKey(key[:0], kindIdemKey, pid, idem)
				err = b.Delete(key, nil)
			}
			if err != nil {
				_ = b.Close()
				return n, closeIter(err, it)
			}
			chunk++
		}
		if err := closeIter(nil, it); err != nil {
			_ = b.Close()
			return n, err
		}
		if chunk == 0 {
			return n, b.Close()
		}
		err = s.commit(b, pebbledb.NoSync)
		_ = b.Close()
		if err != nil {
			return n, err
		}
		n += chunk
		if chunk < compactChunk {
			return n, nil
		}
	}
}
