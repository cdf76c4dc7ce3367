package pebble

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"

	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/dalvdb/dalv/store"
)

// reader is the store.Reader of one Update or View. In an Update it reads
// the database directly (the partition lock keeps every other writer of the
// partition out) and remembers the head and entry versions fn read, so that
// applying the commit does not read them again.
type reader struct {
	src     pebbledb.Reader // the DB in an Update, a snapshot in a View
	p       store.Partition
	pid     []byte // p encoded, see appendPartition
	scratch []byte // the key being looked up

	inUpdate bool
	// heads is the store's head cache in an Update, which holds the
	// partition's lock; nil elsewhere.
	heads    *headCache
	headRead bool
	head     store.Head
	headDevs []byte // the head's devices (see encodeHead), a copy
	feedSeq  uint64 // the seq of the partition's last feed record, from its head
	devBuf   []byte // the devices of the head a commit writes
	seen     []seenKey
	seenIdx  map[string]int // index into seen, built when seen is long

	pidBuf  [32]byte
	keyBuf  [96]byte
	seenBuf [4]seenKey
}

// seenKey is what an Update's fn read of one key: whether it has an entry,
// and that entry's version and, for a timed tombstone, its commit time.
type seenKey struct {
	key     string
	version uint64
	nanos   uint64
	ok      bool
	timed   bool
}

// seenIdxMin is the length of seen from which lookups go through a map.
const seenIdxMin = 16

// readers recycles readers, each some 500 bytes with its buffers: a sync
// takes one.
var readers = sync.Pool{New: func() any { return new(reader) }}

// The largest buffers a released reader keeps, in bytes and in seen keys;
// larger ones, from a large commit, go to the garbage collector.
const (
	pooledBufMax  = 4 << 10
	pooledSeenMax = 64
)

// newReader returns a reader of p in src; release gives it back.
func newReader(src pebbledb.Reader, p store.Partition, inUpdate bool) *reader {
	r := readers.Get().(*reader)
	r.src, r.p, r.inUpdate = src, p, inUpdate
	r.pid = appendPartition(r.pidBuf[:0], p)
	if r.scratch == nil {
		r.scratch = r.keyBuf[:0]
	}
	if r.seen == nil {
		r.seen = r.seenBuf[:0]
	}
	return r
}

// release returns r to the pool with its buffers emptied. Neither r nor
// anything that aliases its buffers may be used after.
func (r *reader) release() {
	clear(r.seen) // drops the keys
	seen, scratch := r.seen[:0], r.scratch[:0]
	headDevs, devBuf := r.headDevs[:0], r.devBuf[:0]
	if cap(seen) > pooledSeenMax {
		seen = nil
	}
	if cap(scratch) > pooledBufMax {
		scratch = nil
	}
	if cap(headDevs) > pooledBufMax {
		headDevs = nil
	}
	if cap(devBuf) > pooledBufMax {
		devBuf = nil
	}
	*r = reader{seen: seen, scratch: scratch, headDevs: headDevs, devBuf: devBuf}
	readers.Put(r)
}

// Head implements store.Reader.
func (r *reader) Head() (store.Head, error) {
	if r.headRead {
		return r.head, nil
	}
	if r.heads != nil && r.heads.get(r.p, r) {
		r.headRead = true
		return r.head, nil
	}
	r.scratch = appendKey(r.scratch[:0], kindHead, r.pid, "")
	v, closer, err := r.src.Get(r.scratch)
	switch {
	case errors.Is(err, pebbledb.ErrNotFound):
	case err != nil:
		return store.Head{}, fmt.Errorf("head %s: %w", r.p, pebbleErr(err))
	default:
		h, feedSeq, devs, err := decodeHead(v)
		if err == nil {
			r.head, r.feedSeq, r.headDevs = h, feedSeq, append(r.headDevs[:0], devs...)
			if r.heads != nil {
				r.heads.put(r.p, h, feedSeq, devs)
			}
		}
		if err = errors.Join(err, closer.Close()); err != nil {
			return store.Head{}, fmt.Errorf("head %s: %w", r.p, err)
		}
	}
	r.headRead = true
	return r.head, nil
}

// Get implements store.Reader.
func (r *reader) Get(key string) (store.Entry, bool, error) {
	r.scratch = appendKey(r.scratch[:0], kindEntry, r.pid, key)
	v, closer, err := r.src.Get(r.scratch)
	if errors.Is(err, pebbledb.ErrNotFound) {
		r.remember(seenKey{key: key})
		return store.Entry{}, false, nil
	}
	if err != nil {
		return store.Entry{}, false, fmt.Errorf("get %s %q: %w", r.p, key, pebbleErr(err))
	}
	e, h, err := decodeEntry(key, v)
	if err = errors.Join(err, closer.Close()); err != nil {
		return store.Entry{}, false, fmt.Errorf("get %s %q: %w", r.p, key, err)
	}
	r.remember(seenOf(key, &h))
	return e, true, nil
}

// seenOf is the seenKey of key's entry, whose header is h.
func seenOf(key string, h *entryHeader) seenKey {
	return seenKey{key: key, version: h.version, nanos: h.nanos, ok: true, timed: h.timed}
}

// remember notes, in an Update, what fn read of a key.
func (r *reader) remember(s seenKey) {
	if r.inUpdate {
		r.seen = append(r.seen, s)
	}
}

// lastEntry returns what key's entry is before the commit: from what fn
// read when it can.
func (r *reader) lastEntry(key string) (seenKey, error) {
	if len(r.seen) >= seenIdxMin && r.seenIdx == nil {
		r.seenIdx = make(map[string]int, len(r.seen))
		for i, s := range r.seen {
			r.seenIdx[s.key] = i
		}
	}
	if r.seenIdx != nil {
		if i, ok := r.seenIdx[key]; ok {
			return r.seen[i], nil
		}
	} else {
		for _, s := range r.seen {
			if s.key == key {
				return s, nil
			}
		}
	}
	r.scratch = appendKey(r.scratch[:0], kindEntry, r.pid, key)
	v, closer, err := r.src.Get(r.scratch)
	if errors.Is(err, pebbledb.ErrNotFound) {
		return seenKey{key: key}, nil
	}
	if err != nil {
		return seenKey{}, fmt.Errorf("get %s %q: %w", r.p, key, pebbleErr(err))
	}
	h, _, err := decodeEntryHeader(v)
	if err = errors.Join(err, closer.Close()); err != nil {
		return seenKey{}, fmt.Errorf("get %s %q: %w", r.p, key, err)
	}
	return seenOf(key, &h), nil
}

// Changes implements store.Reader. It walks the version index and looks each
// key's entry up with a second iterator.
func (r *reader) Changes(after uint64, fn func(store.Entry) (bool, error)) error {
	if after == math.MaxUint64 {
		return nil
	}
	idxPrefix := append([]byte{kindVersion}, r.pid...)
	lower := binary.BigEndian.AppendUint64(append([]byte(nil), idxPrefix...), after+1)
	idx, err := r.src.NewIter(&pebbledb.IterOptions{LowerBound: lower, UpperBound: store.PrefixEnd(idxPrefix)})
	if err != nil {
		return fmt.Errorf("changes %s: %w", r.p, err)
	}
	entryPrefix := append([]byte{kindEntry}, r.pid...)
	ents, err := r.src.NewIter(&pebbledb.IterOptions{LowerBound: entryPrefix, UpperBound: store.PrefixEnd(entryPrefix)})
	if err != nil {
		return closeIter(fmt.Errorf("changes %s: %w", r.p, err), idx)
	}
	err = r.changes(idx, ents, len(idxPrefix), entryPrefix, fn)
	return closeIter(closeIter(err, ents), idx)
}

func (r *reader) changes(idx, ents *pebbledb.Iterator, idxPrefixLen int, entryKey []byte, fn func(store.Entry) (bool, error)) error {
	entryPrefixLen := len(entryKey)
	for valid := idx.First(); valid; valid = idx.Next() {
		k := idx.Key()[idxPrefixLen:]
		if len(k) <= 8 {
			return fmt.Errorf("changes %s: version index key %x: %w", r.p, idx.Key(), store.ErrCorruption)
		}
		version := binary.BigEndian.Uint64(k)
		key := k[8:]
		entryKey = append(entryKey[:entryPrefixLen], key...)
		if !ents.SeekGE(entryKey) || !bytes.Equal(ents.Key(), entryKey) {
			if err := ents.Error(); err != nil {
				return fmt.Errorf("changes %s: %w", r.p, pebbleErr(err))
			}
			return fmt.Errorf("changes %s: version %d key %q has no entry: %w", r.p, version, key, store.ErrCorruption)
		}
		v, err := ents.ValueAndErr()
		if err != nil {
			return fmt.Errorf("changes %s: %w", r.p, pebbleErr(err))
		}
		e, _, err := decodeEntry(string(key), v)
		if err != nil {
			return fmt.Errorf("changes %s %q: %w", r.p, key, err)
		}
		if e.Version != version {
			return fmt.Errorf("changes %s: version %d key %q has entry of version %d: %w", r.p, version, key, e.Version, store.ErrCorruption)
		}
		if more, err := fn(e); err != nil || !more {
			return err
		}
	}
	return nil
}

// Scan implements store.Reader.
func (r *reader) Scan(prefix, startAfter string, fn func(store.Entry) (bool, error)) error {
	base := len(r.pid) + 1
	lower := appendKey(nil, kindEntry, r.pid, prefix)
	it, err := r.src.NewIter(&pebbledb.IterOptions{LowerBound: lower, UpperBound: store.PrefixEnd(lower)})
	if err != nil {
		return fmt.Errorf("scan %s: %w", r.p, err)
	}
	start := lower
	if startAfter >= prefix {
		// The first key after startAfter is startAfter+"\x00".
		start = append(appendKey(nil, kindEntry, r.pid, startAfter), 0)
	}
	for valid := it.SeekGE(start); valid; valid = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return closeIter(fmt.Errorf("scan %s: %w", r.p, pebbleErr(err)), it)
		}
		if len(v) > 0 && v[0]&entryDeleted != 0 {
			continue
		}
		key := string(it.Key()[base:])
		e, _, err := decodeEntry(key, v)
		if err != nil {
			return closeIter(fmt.Errorf("scan %s %q: %w", r.p, key, err), it)
		}
		if more, err := fn(e); err != nil || !more {
			return closeIter(err, it)
		}
	}
	return closeIter(nil, it)
}

// DeviceBatch implements store.Reader: the head's entry for the device if
// it has one, else the device's own record.
func (r *reader) DeviceBatch(device string) (uint64, error) {
	if _, err := r.Head(); err != nil {
		return 0, err
	}
	if batch, ok := headDeviceBatch(r.headDevs, device); ok {
		return batch, nil
	}
	r.scratch = appendKey(r.scratch[:0], kindDevice, r.pid, device)
	v, closer, err := r.src.Get(r.scratch)
	if errors.Is(err, pebbledb.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("device batch %s %q: %w", r.p, device, pebbleErr(err))
	}
	batch, err := decodeUvarint(v)
	if err = errors.Join(err, closer.Close()); err != nil {
		return 0, fmt.Errorf("device batch %s %q: %w", r.p, device, err)
	}
	return batch, nil
}

// IdempotencyKey implements store.Reader.
func (r *reader) IdempotencyKey(key string) (store.KeyRecord, bool, error) {
	r.scratch = appendKey(r.scratch[:0], kindIdemKey, r.pid, key)
	v, closer, err := r.src.Get(r.scratch)
	if errors.Is(err, pebbledb.ErrNotFound) {
		return store.KeyRecord{}, false, nil
	}
	if err != nil {
		return store.KeyRecord{}, false, fmt.Errorf("idempotency key %s %q: %w", r.p, key, pebbleErr(err))
	}
	rec, err := decodeKeyRecord(v)
	if err = errors.Join(err, closer.Close()); err != nil {
		return store.KeyRecord{}, false, fmt.Errorf("idempotency key %s %q: %w", r.p, key, err)
	}
	return rec, true, nil
}

// closeIter closes it and returns err, or the iterator's error if err is nil.
// err is returned as is, so that fn's own errors reach the caller unchanged.
func closeIter(err error, it *pebbledb.Iterator) error {
	if cerr := it.Close(); cerr != nil && err == nil {
		return pebbleErr(cerr)
	}
	return err
}
