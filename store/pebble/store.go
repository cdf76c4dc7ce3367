// Package pebble is DalvDB's embedded store: a [store.Store] on a Pebble
// database in one data directory.
//
// Guarantees:
//   - Every commit is one Pebble batch, written to the WAL and fsynced
//     before Update returns; a crash at any instant leaves each commit wholly
//     applied or wholly absent. Concurrent commits share WAL fsyncs through
//     Pebble's commit pipeline.
//   - Updates of one partition are serialised by a per-partition mutex;
//     Updates of different partitions never wait for each other. Pebble's
//     LOCK file keeps every other process (and every other [Open] in this
//     process) out of the directory, so the mutex is enough.
//   - View reads a Pebble snapshot: Head, entries and device records agree.
//   - A WAL write or fsync that fails (a failing or full disk) fails the
//     store for good: the commit that met it, and every later call, fail
//     with an error wrapping [store.ErrUnavailable], and [Store.Healthy]
//     reports it. Pebble cannot go on after such a failure, and its
//     memtable may then hold commits that were never synced, so nothing is
//     read from it again; opening the directory again (a restart) recovers
//     every commit that was acknowledged. The same failure in one of
//     Pebble's own goroutines (a flush writing its MANIFEST, say) panics
//     and ends the process, which also acknowledges nothing unsynced.
//   - Decoders never panic on bad bytes; they return errors that wrap
//     [store.ErrCorruption].
//   - The change feed ([Store.Feed]) never passes a seq still in flight, so
//     a reader resuming after the last record it saw never skips one.
//   - An erase drops, in its own batch, every key that holds the erased
//     partition's data: its entries and their indexes, and its earlier
//     feed records. Only its head, its device records, its idempotency key
//     records (a version and a digest each, until retention drops them)
//     and the erase's own feed record remain.
//   - Pebble makes a batch visible to reads before its fsync ends: a View
//     takes its snapshot only while no commit of its partition is in
//     flight, so it never reads a commit that is not synced (the feed
//     waits for commits to return).
//
// Caveats: erased and compacted data leaves the database at once, but the
// bytes stay in Pebble's WAL and sstables until Pebble compacts them away.
// A tombstone without a commit time (its entryTimed flag unset, which the
// format allows and this store does not write) keeps its index key, which
// names its key, through an erase, until Compact passes that time.
//
// Lock order: Store.compactMu, then a partition's lock, then its commit
// lock, then feedSeqs.mu.
package pebble

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/dalvdb/dalv/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of [Options]. Pebble keeps its block cache and memtables outside
// the Go heap, in at most CacheSize + 2*MemTableSize bytes: 16 MiB with these
// defaults, so that a server under a hundred devices' sync load stays under
// 64 MB resident. Measured side by side with 16 and 8 MiB, the sync rate and
// its CPU were the same and the peak RSS 8 MB lower. (glibc's malloc adds up
// to a third on top with its per-thread arenas; MALLOC_ARENA_MAX=2 in the
// environment curbs that.)
const (
	DefaultCacheSize    = 8 << 20
	DefaultMemTableSize = 4 << 20
)

// DefaultWALMinSyncInterval is the least time between two fsyncs of the WAL
// by default while synced commits come from more than one writer at a time,
// and MaxWALMinSyncInterval the most [Options] accepts. A commit that asks
// for an fsync sooner after the last one waits for the rest of the interval
// and shares its fsync with the commits that come meanwhile; every commit
// still returns only once its own fsync has ended. Under a hundred devices'
// sync load, measured side by side on two cores, 500µs made each fsync carry
// two to three times as many commits and cut the server's CPU per sync by a
// tenth to a fifth; 1ms did worse than 500µs and 250µs no better.
const (
	DefaultWALMinSyncInterval = 500 * time.Microsecond
	MaxWALMinSyncInterval     = 100 * time.Millisecond
)

// Options configures [Open]. The zero value is ready to use.
type Options struct {
	// Logger receives Pebble's own messages: informational ones at debug
	// level, errors at warn level. nil discards them.
	Logger *slog.Logger
	// CacheSize is the block cache size in bytes; 0 means DefaultCacheSize.
	CacheSize int64
	// MemTableSize is the size in bytes of one memtable, of which Pebble
	// holds up to two (one filling, one flushing); 0 means
	// DefaultMemTableSize.
	MemTableSize int64
	// WALMinSyncInterval is the least time between two fsyncs of the WAL
	// while synced commits come from more than one writer at a time (see
	// [DefaultWALMinSyncInterval]), at most MaxWALMinSyncInterval; 0 means
	// DefaultWALMinSyncInterval and a negative value none, each fsync
	// starting as soon as one is asked for and the last has ended. A lone
	// writer, one synced commit after another, never waits for it.
	WALMinSyncInterval time.Duration
	// FS is the file system the store lives on; nil means the operating
	// system's. Tests inject crashes with vfs.NewCrashableMem.
	FS vfs.FS
}

// withDefaults returns a copy of o with defaults filled in, or an error if o
// is invalid.
func (o Options) withDefaults() (Options, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.MemTableSize == 0 {
		o.MemTableSize = DefaultMemTableSize
	}
	if o.WALMinSyncInterval == 0 {
		o.WALMinSyncInterval = DefaultWALMinSyncInterval
	}
	if o.WALMinSyncInterval > MaxWALMinSyncInterval {
		return o, fmt.Errorf("WAL minimum sync interval %v is over %v", o.WALMinSyncInterval, MaxWALMinSyncInterval)
	}
	if o.CacheSize < 0 {
		return o, fmt.Errorf("cache size %d is negative", o.CacheSize)
	}
	if o.MemTableSize < 1<<20 || o.MemTableSize > 1<<30 {
		return o, fmt.Errorf("memtable size %d is outside 1 MiB to 1 GiB", o.MemTableSize)
	}
	return o, nil
}

// Store is a [store.Store] in a Pebble database. It is safe for concurrent
// use.
type Store struct {
	db      *pebbledb.DB
	dirLock *pebbledb.Lock
	dir     string
	log     *slog.Logger
	// release gives up this process's claim on dir.
	release func()

	parts lockTable
	heads headCache
	feed  feedSeqs
	// feedFloor is the feed's horizon: the highest seq Compact dropped. It
	// is raised before the batch that drops records commits, so a Feed that
	// reads it after opening its iterator either sees the records or knows
	// they are gone. (A drop that fails to commit leaves it raised: readers
	// are told of a drop that did not happen, never the reverse.)
	feedFloor atomic.Uint64
	// compactMu serialises Compact, so two never count the same drop.
	compactMu sync.Mutex

	// gate admits Updates, Views, Compacts and feed reads until Close,
	// which waits for them; a running Compact stops early once it closes.
	gate store.Gate
	// failed is set by Pebble's Fatalf: then every call fails with it.
	failed *failure
	// stalls counts Pebble's write stalls for the metrics.
	stalls *writeStalls
	// gap is the wait between the WAL's fsyncs.
	gap *syncGap
}

// syncGap is how long the WAL waits after an fsync before the next one:
// Options.WALMinSyncInterval when more than one synced commit began since the
// fsync before ended, so that others are likely on their way to share the
// next; none otherwise. A lone writer's commits then never wait, as waiting
// would only slow it: its next commit cannot begin before the last returns.
type syncGap struct {
	interval time.Duration
	began    atomic.Uint64 // synced commits begun
	seen     atomic.Uint64 // began, when the last fsync ended
}

// begin counts a synced commit about to be written.
func (g *syncGap) begin() { g.began.Add(1) }

// next is Pebble's WALMinSyncInterval, called as each fsync ends.
func (g *syncGap) next() time.Duration {
	n := g.began.Load()
	if n-g.seen.Swap(n) > 1 {
		return g.interval
	}
	return 0
}

var (
	_ store.Store          = (*Store)(nil)
	_ store.Checker        = (*Store)(nil)
	_ prometheus.Collector = (*Store)(nil)
)

// Open opens the store in dir, creating it if needed. It fails with an error
// wrapping [ErrLocked] when another process, or another Open in this
// process, holds dir.
func Open(dir string, opts Options) (*Store, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	fsys := opts.FS
	if fsys == nil {
		fsys = vfs.Default
	}
	if err := fsys.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	release := func() {}
	if opts.FS == nil {
		// Pebble refuses a second lock in this process too, but says so in a
		// plain error; claim the directory first to tell that case apart.
		if release, err = claimDir(dir); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	}
	dirLock, err := pebbledb.LockDirectory(dir, fsys)
	if err != nil {
		release()
		if isLockHeld(err) {
			return nil, fmt.Errorf("open store %s: %w (%v)", dir, ErrLocked, err)
		}
		return nil, fmt.Errorf("open store %s: lock: %w", dir, err)
	}
	failed, stalls := new(failure), new(writeStalls)
	gap := &syncGap{interval: opts.WALMinSyncInterval}
	popts := dbOptions(opts)
	if gap.interval > 0 {
		popts.WALMinSyncInterval = gap.next
	}
	popts.Logger = slogLogger{l: opts.Logger, failed: failed}
	popts.EventListener.WriteStallBegin = stalls.begin
	popts.EventListener.WriteStallEnd = stalls.end
	popts.Lock = dirLock
	if opts.FS != nil {
		popts.FS = opts.FS
	}
	db, err := pebbledb.Open(dir, popts)
	if err != nil {
		_ = dirLock.Close()
		release()
		return nil, fmt.Errorf("open store %s: %w", dir, pebbleErr(err))
	}
	s := &Store{db: db, dirLock: dirLock, dir: dir, log: opts.Logger, release: release, failed: failed, stalls: stalls, gap: gap}
	next, floor, err := s.recoverFeed()
	if err != nil {
		_ = db.Close()
		_ = dirLock.Close()
		release()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	s.feed.next = next
	s.feedFloor.Store(floor)
	return s, nil
}

// ErrLocked is returned by [Open] when another process, or another Open in
// this process, holds the data directory.
var ErrLocked = errors.New("data directory is in use by another process")

// openDirs is the set of directories open in this process, by absolute path.
var openDirs struct {
	mu sync.Mutex
	m  map[string]bool
}

// claimDir claims dir for this process, or fails with ErrLocked.
func claimDir(dir string) (release func(), err error) {
	path, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	openDirs.mu.Lock()
	defer openDirs.mu.Unlock()
	if openDirs.m[path] {
		return nil, fmt.Errorf("%w (held by this process)", ErrLocked)
	}
	if openDirs.m == nil {
		openDirs.m = make(map[string]bool)
	}
	openDirs.m[path] = true
	return func() {
		openDirs.mu.Lock()
		delete(openDirs.m, path)
		openDirs.mu.Unlock()
	}, nil
}

// isLockHeld reports whether err, from locking the LOCK file, says another
// process holds it: fcntl fails with EAGAIN or EACCES then. An EACCES from
// creating the file is a permission problem, and comes as a *fs.PathError.
func isLockHeld(err error) bool {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return false
	}
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES)
}

// recoverFeed recovers the feed floor (the highest seq Compact dropped) and
// the next feed seq: above the last feed record, and above the floor. An
// erase never drops the last record: its own comes after those it drops.
func (s *Store) recoverFeed() (next, floor uint64, err error) {
	var last uint64
	it, err := s.db.NewIter(&pebbledb.IterOptions{
		LowerBound: []byte{kindFeed},
		UpperBound: []byte{kindFeed + 1},
	})
	if err != nil {
		return 0, 0, fmt.Errorf("recover feed seq: %w", err)
	}
	if it.Last() {
		last, err = decodeFeedKey(it.Key())
	}
	if err = errors.Join(err, it.Close()); err != nil {
		return 0, 0, fmt.Errorf("recover feed seq: %w", pebbleErr(err))
	}
	floor, err = getUvarint(s.db, metaFeedFloor)
	if err != nil {
		return 0, 0, fmt.Errorf("recover feed seq: %w", err)
	}
	return max(last, floor) + 1, floor, nil
}

// getUvarint reads a value that is one uvarint; 0 when key is absent.
func getUvarint(r pebbledb.Reader, key []byte) (uint64, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebbledb.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, pebbleErr(err)
	}
	n, err := decodeUvarint(v)
	return n, errors.Join(err, closer.Close())
}

// enter admits an operation as the store's gate does (see [store.Gate]),
// or fails once the store has failed. On success the caller calls
// s.gate.Exit.
func (s *Store) enter() error {
	if err := s.gate.Enter(); err != nil {
		return err
	}
	if err := s.failed.get(); err != nil {
		s.gate.Exit()
		return err
	}
	return nil
}

// enterPartition is enter for an operation on p under ctx (see
// [store.Gate.EnterPartition]).
func (s *Store) enterPartition(ctx context.Context, p store.Partition) error {
	if err := s.gate.EnterPartition(ctx, p); err != nil {
		return err
	}
	if err := s.failed.get(); err != nil {
		s.gate.Exit()
		return err
	}
	return nil
}

// Healthy implements [store.Checker]: nil, or the failure (wrapping
// [store.ErrUnavailable]) after a write to disk failed.
func (s *Store) Healthy() error { return s.failed.get() }

// commit commits b. A commit whose WAL write or fsync fails makes Pebble
// call Fatalf; the panic that raises is recovered here and returned as the
// store's failure, which every later call returns too.
func (s *Store) commit(b *pebbledb.Batch, o *pebbledb.WriteOptions) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(fatalError); !ok {
				panic(r)
			}
			err = s.failed.get()
		}
	}()
	if o.GetSync() {
		s.gap.begin()
	}
	return pebbleErr(b.Commit(o))
}

// Update implements [store.Store]. fn is called exactly once; the Reader it
// gets must not be used after fn returns.
func (s *Store) Update(ctx context.Context, p store.Partition, fn func(r store.Reader) (*store.Commit, error)) error {
	if err := s.enterPartition(ctx, p); err != nil {
		return err
	}
	defer s.gate.Exit()
	l := s.parts.lock(p)
	defer s.parts.unlock(p, l)
	r := newReader(s.db, p, true)
	defer r.release()
	r.heads = &s.heads
	c, err := fn(r)
	if err != nil || c == nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.apply(r, c, l); err != nil {
		return fmt.Errorf("commit %s version %d: %w", p, c.Version, err)
	}
	return nil
}

// apply writes c to r's partition as one synced batch. The caller holds the
// partition's lock.
func (s *Store) apply(r *reader, c *store.Commit, l *partitionLock) error {
	head, err := r.Head()
	if err != nil {
		return err
	}
	if err := c.Check(head); err != nil {
		return err
	}
	nanos := max(c.Time.UnixNano(), 0)
	b := s.db.NewBatch()
	defer b.Close()
	pid := r.pid
	if c.Erase {
		if err := s.erase(b, r); err != nil {
			return err
		}
		head.Horizon = c.Version
	}
	head.Version = c.Version
	key := r.scratch[:0] // shared with r's lookups: each use rebuilds it
	for i := range c.Entries {
		e := &c.Entries[i]
		if !c.Erase {
			prev, err := r.lastEntry(e.Key)
			if err != nil {
				return err
			}
			if prev.ok {
				// A version index key is set once, by the commit of its
				// version, and deleted once: a single delete, which
				// vanishes with the set where they meet in a flush or a
				// compaction instead of sinking to the last level.
				key = appendVersionKey(key[:0], pid, prev.version, e.Key)
				if err := b.SingleDelete(key, nil); err != nil {
					return err
				}
			}
			if prev.timed {
				// The index holds current tombstones only. Deleted before
				// the new tombstone's item is set: it may be the same key.
				key = appendTombKey(key[:0], prev.nanos, pid, e.Key)
				if err := b.Delete(key, nil); err != nil {
					return err
				}
			}
		}
		key = appendKey(key[:0], kindEntry, pid, e.Key)
		op := b.SetDeferred(len(key), entryLen(e, uint64(nanos)))
		copy(op.Key, key)
		putEntry(op.Value, e, uint64(nanos))
		if err := op.Finish(); err != nil {
			return err
		}
		key = appendVersionKey(key[:0], pid, c.Version, e.Key)
		if err := b.Set(key, nil, nil); err != nil {
			return err
		}
		if e.Deleted {
			key = appendTombKey(key[:0], uint64(nanos), pid, e.Key)
			var v [10]byte
			if err := b.Set(key, binary.AppendUvarint(v[:0], c.Version), nil); err != nil {
				return err
			}
		}
	}
	// The feed record's seq goes into the head, which links the
	// partition's records for an erase (see feedRecord.Prev).
	seq := s.feed.alloc()
	defer func() {
		// After a failure the record may be in Pebble's memtable, never
		// synced: its seq stays in flight, so no feed reader passes it.
		if s.failed.get() == nil {
			s.feed.done(seq)
		}
	}()
	var v [20]byte
	devs, pushed, pushedBatch := r.headDevs, []byte(nil), uint64(0)
	if c.Device != "" {
		devs, pushed, pushedBatch = withHeadDevice(r.devBuf[:0], r.headDevs, c.Device, c.Batch)
		r.devBuf = devs
	}
	key = appendKey(key[:0], kindHead, pid, "")
	op := b.SetDeferred(len(key), headLen(head, seq, devs))
	copy(op.Key, key)
	encodeHead(op.Value[:0], head, seq, devs)
	if err := op.Finish(); err != nil {
		return err
	}
	if pushed != nil {
		key = appendKey(key[:0], kindDevice, pid, string(pushed))
		if err := b.Set(key, binary.AppendUvarint(v[:0], pushedBatch), nil); err != nil {
			return err
		}
	}
	if c.IdempotencyKey != "" {
		key = appendKey(key[:0], kindIdemKey, pid, c.IdempotencyKey)
		if err := b.Set(key, encodeKeyRecord(nil, c.Version, uint64(nanos), c.KeyDigest), nil); err != nil {
			return err
		}
		key = appendIdemTimeKey(key[:0], uint64(nanos), pid, c.IdempotencyKey)
		if err := b.Set(key, nil, nil); err != nil {
			return err
		}
	}
	rec := feedRecord{Partition: r.p, Version: c.Version, Nanos: nanos, Erase: c.Erase, Linked: true, Ops: c.Ops}
	if !c.Erase { // an erase drops every record before its own
		rec.Prev = r.feedSeq
	}
	op = b.SetDeferred(9, feedRecordLen(&rec))
	op.Key[0] = kindFeed
	binary.BigEndian.PutUint64(op.Key[1:], seq)
	putFeedRecord(op.Value, &rec)
	if err := op.Finish(); err != nil {
		return err
	}
	r.scratch = key
	l.commit.Lock()
	defer l.commit.Unlock()
	if err := s.commit(b, pebbledb.Sync); err != nil {
		s.heads.drop(r.p)
		return err
	}
	s.heads.put(r.p, head, seq, devs)
	return nil
}

// erase adds to b the deletes of every key that holds r's partition's data
// but its head and device records: its entries, their version index, the
// index keys of its tombstones, and its feed records (with the feed index
// keys of those written with one). A feed reader that has not reached
// those records yet never will: the erase's own record, written after
// them, tells it the partition was wiped. The caller has read r's head.
func (s *Store) erase(b *pebbledb.Batch, r *reader) error {
	pid := r.pid
	entries := appendKey(nil, kindEntry, pid, "")
	it, err := r.src.NewIter(&pebbledb.IterOptions{LowerBound: entries, UpperBound: store.PrefixEnd(entries)})
	if err != nil {
		return err
	}
	var key []byte
	for valid := it.First(); valid; valid = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return closeIter(pebbleErr(err), it)
		}
		if len(v) > 0 && v[0]&entryDeleted == 0 {
			continue // live: not in the tombstone index
		}
		h, _, err := decodeEntryHeader(v)
		if err != nil {
			return closeIter(fmt.Errorf("erase %s: entry %q: %w", r.p, it.Key()[len(entries):], err), it)
		}
		if h.timed { // else written before tombstones had a time: Compact drops its item
			key = appendTombKey(key[:0], h.nanos, pid, it.Key()[len(entries):])
			if err := b.Delete(key, nil); err != nil {
				return closeIter(err, it)
			}
		}
	}
	if err := closeIter(nil, it); err != nil {
		return err
	}
	if err := s.eraseLinkedFeed(b, r); err != nil {
		return err
	}
	// Records written before they were linked, found by their index.
	index := appendFeedIndexKey(nil, pid, 0)[:1+len(pid)]
	it, err = r.src.NewIter(&pebbledb.IterOptions{LowerBound: index, UpperBound: store.PrefixEnd(index)})
	if err != nil {
		return err
	}
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		if len(k) != len(index)+8 {
			return closeIter(corruptf("erase %s: feed index key %x", r.p, k), it)
		}
		key = append(append(key[:0], kindFeed), k[len(index):]...)
		if err := b.Delete(key, nil); err != nil {
			return closeIter(err, it)
		}
	}
	if err := closeIter(nil, it); err != nil {
		return err
	}
	for _, prefix := range [...][]byte{entries, index, appendKey(nil, kindVersion, pid, "")} {
		if err := b.DeleteRange(prefix, store.PrefixEnd(prefix), nil); err != nil {
			return err
		}
	}
	return nil
}

// eraseLinkedFeed adds to b the deletes of r's partition's linked feed
// records: from the head's last one back along their Prev links, to the
// first, or to the feed's floor, below which Compact has dropped them all.
func (s *Store) eraseLinkedFeed(b *pebbledb.Batch, r *reader) error {
	for seq := r.feedSeq; seq != 0; {
		key := feedKey(seq)
		v, closer, err := r.src.Get(key)
		if errors.Is(err, pebbledb.ErrNotFound) {
			// Compact raises the floor before its drop commits, so a
			// record it dropped is below the floor read after missing it.
			if seq <= s.feedFloor.Load() {
				return nil
			}
			return corruptf("erase %s: feed record %d is missing", r.p, seq)
		}
		if err != nil {
			return pebbleErr(err)
		}
		rec, _, err := decodeFeedHeader(v)
		if err = errors.Join(err, closer.Close()); err != nil {
			return fmt.Errorf("erase %s: feed record %d: %w", r.p, seq, err)
		}
		if rec.Partition != r.p || !rec.Linked || rec.Prev >= seq {
			return corruptf("erase %s: feed record %d is of %s, linked %t to %d", r.p, seq, rec.Partition, rec.Linked, rec.Prev)
		}
		if err := b.Delete(key, nil); err != nil {
			return err
		}
		seq = rec.Prev
	}
	return nil
}

// View implements [store.Store].
func (s *Store) View(ctx context.Context, p store.Partition, fn func(r store.Reader) error) error {
	if err := s.enterPartition(ctx, p); err != nil {
		return err
	}
	defer s.gate.Exit()
	var snap *pebbledb.Snapshot
	s.parts.snapshot(p, func() { snap = s.db.NewSnapshot() })
	defer snap.Close()
	// A commit of p that failed before the snapshot left its batch in
	// the memtable: the store has failed, and nothing is read.
	if err := s.failed.get(); err != nil {
		return err
	}
	r := newReader(snap, p, false)
	defer r.release()
	return fn(r)
}

// DiskBytes implements [store.Store]; 0 once closed.
func (s *Store) DiskBytes() int64 {
	if s.gate.Enter() != nil {
		return 0
	}
	defer s.gate.Exit()
	m := s.db.Metrics()
	usage := m.DiskSpaceUsage()
	// Pebble counts the WAL being written at its size when opened; its
	// logical size is the better guess.
	if m.WAL.Size > m.WAL.PhysicalSize {
		usage += m.WAL.Size - m.WAL.PhysicalSize
	}
	return int64(usage)
}

// Close implements [store.Store]: it waits for Updates, Views and Compacts
// in flight, then closes the database and releases the directory. Closing a
// closed store does nothing.
func (s *Store) Close() error {
	if !s.gate.Close() {
		return nil
	}
	err := s.db.Close()
	err = errors.Join(err, s.dirLock.Close())
	s.release()
	if err != nil {
		return fmt.Errorf("close store %s: %w", s.dir, err)
	}
	return nil
}

// pebbleErr marks Pebble's corruption errors with store.ErrCorruption.
func pebbleErr(err error) error {
	if err != nil && pebbledb.IsCorruptionError(err) && !errors.Is(err, store.ErrCorruption) {
		return fmt.Errorf("%w: %w", store.ErrCorruption, err)
	}
	return err
}
