package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/rules"
	"github.com/dalvdb/dalv/value"
)

// Value is what a key holds: a scalar (opaque bytes) or a list (an ordered
// set of byte strings, in order of first addition). It is the wire type of
// package dalvv1; build values with [Scalar] and [List], read them with
// GetScalar and GetList().GetItems(). Values returned by a [Replica] belong
// to the caller.
type Value = dalvv1.Value

// Op is one change to one key, as the wire protocol carries it.
type Op = dalvv1.Op

// Item is one key and its value, as [Replica.List] returns them.
type Item struct {
	// Key is the key.
	Key string
	// Value is what the key holds as the device sees it.
	Value *Value
}

// Replica is a user's data on this device: one crash-safe file holding the
// synced values, the pending local writes, and what the device knows of the
// server. Its methods are safe for concurrent use.
//
// Lock order: syncMu, then wmu, then mu; statusMu and subsMu are leaves.
type Replica struct {
	path     string
	opts     Options
	log      *slog.Logger
	db       *bolt.DB
	deviceID string
	cli      dalvv1connect.ClientServiceClient // nil without a server

	// syncMu serialises exchanges with the server and the application of
	// their answers, so a watch event and a sync answer never interleave.
	syncMu sync.Mutex
	// wmu serialises writers of the file: local writes and remote applies.
	wmu sync.Mutex
	// mu guards the in-memory state below. Readers hold it shared for the
	// whole read, so a read sees each write entirely or not at all.
	mu       sync.RWMutex
	closed   bool
	pend     map[string]*pkey // own partition's keys with pending ops
	queue    []*batch         // pending batches, in order
	versions map[string]uint64
	cfg      config
	inboxN   int
	refusedN int

	// Only with syncMu held:
	sentSeq   uint64          // the head batch may have reached the server: never merge it
	limitHits int             // resource_exhausted answers in a row for the head batch
	resynced  bool            // a pull found the server behind and took everything again
	noMerge   map[uint64]bool // parts of a refused merged batch: sent alone

	tok tokenState

	statusMu sync.Mutex
	status   Status
	syncs    syncRecord // guarded by statusMu

	subsMu sync.Mutex
	subs   map[*subscription]struct{}

	loop loopState
	kick chan struct{}

	// life is cancelled by Close, ending requests in flight.
	life     context.Context
	lifeDone context.CancelFunc
}

// config is what the device knows of the server: the defaults until first
// contact, then what GetConfig said.
type config struct {
	systemPrefixes  []string
	readable        []string // shared partitions the token may read
	lim             value.Limits
	maxRequestBytes int
	user            string
	known           bool
	rules           *rules.Set // the server's write rules; nil when none
}

func defaultConfig() config {
	return config{
		systemPrefixes:  slices.Clone(value.DefaultSystemPrefixes),
		lim:             value.Limits{MaxKeyBytes: value.DefaultMaxKeyBytes, MaxValueBytes: value.DefaultMaxValueBytes, MaxOps: value.DefaultMaxOps, MaxResponseBytes: value.DefaultMaxResponseBytes},
		maxRequestBytes: value.DefaultMaxRequestBytes,
	}
}

func configFrom(m *dalvv1.GetConfigResponse) config {
	c := defaultConfig()
	c.systemPrefixes = slices.Clone(m.GetSystemPrefixes())
	c.readable = slices.Clone(m.GetSharedPartitions())
	set := func(dst *int, v uint32) {
		if v > 0 {
			*dst = int(v)
		}
	}
	set(&c.lim.MaxKeyBytes, m.GetMaxKeyBytes())
	set(&c.lim.MaxValueBytes, m.GetMaxValueBytes())
	set(&c.lim.MaxOps, m.GetMaxOps())
	set(&c.lim.MaxResponseBytes, m.GetMaxResponseBytes())
	set(&c.maxRequestBytes, m.GetMaxRequestBytes())
	c.user = m.GetUser()
	c.known = true
	c.rules = compiledRules(m)
	return c
}

// systemPrefix returns the system prefix key falls under, if any.
func (c *config) systemPrefix(key string) (string, bool) {
	for _, p := range c.systemPrefixes {
		if strings.HasPrefix(key, p) {
			return p, true
		}
	}
	return "", false
}

// Open opens the replica file at path, creating it (and a new random device
// id) if it does not exist. A file another process has open is refused with
// [ErrLocked]. Open copies opts and fills in defaults; it does not contact
// the server: reads and writes work offline at once.
//
// Open checks the whole file's structure first: a damaged file is refused
// with an error matching [ErrCorrupt] that names the file and the damage,
// never a crash. With [Options.OnCorrupt] set, Open instead sets the damaged
// file aside, starts a fresh replica holding the pending writes it could
// salvage, and reports what it did (see [CorruptReport]).
func Open(path string, opts Options) (*Replica, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("open replica %s: %w", path, err)
	}
	r, err := open(path, o)
	if err == nil || !errors.Is(err, ErrCorrupt) || o.OnCorrupt == nil {
		return r, err
	}
	rep, rerr := recoverCorrupt(path, o, err)
	if rerr != nil {
		return nil, fmt.Errorf("%w; setting the file aside failed: %v", err, rerr)
	}
	if r, err = open(path, o); err != nil {
		return nil, fmt.Errorf("open replica %s after setting the damaged file aside as %s: %w", path, rep.MovedTo, err)
	}
	reportCorrupt(o, rep)
	return r, nil
}

// open is Open without recovery.
func open(path string, o Options) (*Replica, error) {
	if err := checkReplicaFile(path, o); err != nil {
		return nil, fmt.Errorf("open replica %s: %w", path, err)
	}
	db, err := openBolt(path, o)
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open replica %s: %w (locked for more than %v; is another copy of the app running on it?)", path, ErrLocked, o.LockTimeout)
		}
		return nil, fmt.Errorf("open replica %s: %w", path, err)
	}
	r := &Replica{
		path:     path,
		opts:     o,
		log:      o.Logger,
		db:       db,
		pend:     make(map[string]*pkey),
		versions: make(map[string]uint64),
		cfg:      defaultConfig(),
		subs:     make(map[*subscription]struct{}),
		kick:     make(chan struct{}, 1),
		noMerge:  make(map[uint64]bool),
	}
	r.life, r.lifeDone = context.WithCancel(context.Background())
	if err := r.init(); err != nil {
		r.lifeDone()
		db.Close()
		return nil, fmt.Errorf("open replica %s: %w", path, err)
	}
	if o.ServerURL != "" {
		r.cli = dalvv1connect.NewClientServiceClient(o.HTTPClient, strings.TrimRight(o.ServerURL, "/"))
	}
	r.status.Pending = len(r.queue)
	r.log.Debug("replica open", "path", path, "device", r.deviceID, "pending", len(r.queue), "version", r.versions[""])
	return r, nil
}

// openBolt opens the checked file with bbolt. The freelist is written with
// each commit (NoFreelistSync false): without it bbolt rebuilds it at open
// by walking every page in a goroutine of its own, where a page damaged in
// a way the check missed would crash the process; reading a synced
// freelist happens in this goroutine, where guard catches it (and the
// file, with its lock, is closed).
func openBolt(path string, o Options) (db *bolt.DB, err error) {
	var file *os.File
	defer func() {
		if db == nil && err != nil && file != nil {
			file.Close()
		}
	}()
	defer guard(path, &err)()
	return bolt.Open(path, 0o600, &bolt.Options{Timeout: o.LockTimeout, NoStatistics: true, FreelistType: bolt.FreelistMapType,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		}})
}

// init creates the buckets of a new file, or checks and loads an existing
// one into memory.
func (r *Replica) init() (err error) {
	defer guard(r.path, &err)()
	defer func() {
		// init makes every bucket it finds missing, and only buckets under
		// those names: a value where one of them belongs (or a bucket where
		// a value does) is damage, as when a bit of an element's flags
		// flipped, which the page checks cannot tell from a good file.
		if errors.Is(err, bolterrors.ErrIncompatibleValue) {
			err = corruptf("%s: a bucket stored as a value, or a value as a bucket (%v)", r.path, err)
		}
	}()
	return r.db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bktMeta)
		if err != nil {
			return err
		}
		switch f := meta.Get(keyFormat); {
		case f == nil:
			if err := meta.Put(keyFormat, []byte(fileFormat)); err != nil {
				return err
			}
		case string(f) != fileFormat:
			return corruptf("file format %q, want %q (not a replica file?)", f, fileFormat)
		}
		for _, b := range [][]byte{bktParts, bktPending, bktPkeys, bktInbox, bktRefused} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if id := meta.Get(keyDevice); id != nil {
			r.deviceID = string(id)
		} else {
			if r.deviceID, err = newDeviceID(); err != nil {
				return err
			}
			if err := meta.Put(keyDevice, []byte(r.deviceID)); err != nil {
				return err
			}
		}
		if c := meta.Get(keyConfig); c != nil {
			var m dalvv1.GetConfigResponse
			if err := proto.Unmarshal(c, &m); err != nil {
				return corruptf("config: %v", err)
			}
			r.cfg = configFrom(&m)
		}
		if u := meta.Get(keyUser); u != nil {
			r.cfg.user = string(u)
		}
		// Partitions: the own one, and the shared ones asked for; shared
		// partitions no longer asked for are dropped.
		parts := tx.Bucket(bktParts)
		want := map[string]bool{string(partBucket("")): true}
		for _, s := range r.opts.Shared {
			want[string(partBucket(s))] = true
		}
		var drop [][]byte
		if err := parts.ForEachBucket(func(k []byte) error {
			if !want[string(k)] {
				drop = append(drop, slices.Clone(k))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range drop {
			if err := parts.DeleteBucket(k); err != nil {
				return err
			}
		}
		for _, part := range append([]string{""}, r.opts.Shared...) {
			pb, err := parts.CreateBucketIfNotExists(partBucket(part))
			if err != nil {
				return err
			}
			if _, err := pb.CreateBucketIfNotExists(bktKV); err != nil {
				return err
			}
			if v := pb.Get(keyVersion); v != nil {
				ver, n := binary.Uvarint(v)
				if n <= 0 {
					return corruptf("partition %q: bad version", part)
				}
				r.versions[part] = ver
			}
		}
		// Pending keys and batches.
		if err := tx.Bucket(bktPkeys).ForEach(func(k, v []byte) error {
			p, err := decodePkey(v)
			if err != nil {
				return fmt.Errorf("pending key %q: %w", k, err)
			}
			r.pend[string(k)] = p
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bktPending).ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return corruptf("pending batch key %x", k)
			}
			b, err := decodeBatch(binary.BigEndian.Uint64(k), v)
			if err != nil {
				return err
			}
			r.queue = append(r.queue, b)
			for _, op := range b.ops {
				p := r.pend[op.GetKey()]
				if p == nil {
					return corruptf("pending op on %q without its pending-key record", op.GetKey())
				}
				p.ops = append(p.ops, op)
			}
			return nil
		}); err != nil {
			return err
		}
		for k, p := range r.pend {
			if len(p.ops) == 0 {
				return corruptf("pending-key record for %q without pending ops", k)
			}
			p.local = applyOps(p.base, p.ops)
		}
		if len(r.queue) > 0 {
			// The head batch may have reached the server before the
			// process ended: it is resent as it is, never merged.
			r.sentSeq = r.queue[0].seq
		}
		r.inboxN = tx.Bucket(bktInbox).Stats().KeyN
		r.refusedN = tx.Bucket(bktRefused).Stats().KeyN
		return nil
	})
}

// newDeviceID makes a random device id.
func newDeviceID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// DeviceID returns the device's stable random id, created with the file.
func (r *Replica) DeviceID() string { return r.deviceID }

// Path returns the replica file's path.
func (r *Replica) Path() string { return r.path }

// User returns the user whose data the replica holds, once a server has
// said so; empty before first contact.
func (r *Replica) User() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cfg.user
}

// Close stops the sync loop, ends subscriptions and closes the file. Pending
// writes stay in the file for the next Open.
func (r *Replica) Close() error {
	r.lifeDone()
	r.Stop()
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.closeSubs()
	if t, ok := r.opts.HTTPClient.Transport.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
	if err := r.db.Close(); err != nil {
		return fmt.Errorf("close replica %s: %w", r.path, err)
	}
	return nil
}

// checkOpen returns ErrClosed once Close was called; mu must be held.
func (r *Replica) checkOpen() error {
	if r.closed {
		return fmt.Errorf("replica %s: %w", r.path, ErrClosed)
	}
	return nil
}

// kickLoop wakes the sync loop after a local write.
func (r *Replica) kickLoop() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}
