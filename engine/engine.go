// Package engine holds DalvDB's rules, written once: idempotent batches per
// device and backend commits under idempotency keys, authorisation by domain, the per-key conflict check in which list
// ops on both sides merge, the atomic apply, the collapse of changes to one
// entry per key, paging at the response limit, resets past the horizon and
// the following of pages across one ([Engine.CatchUp]), and the backends'
// change feed with its opaque cursors and prefix filter ([Engine.OpenFeed]).
// It runs over one store transaction per partition (package store) and knows
// nothing of HTTP; package server turns its errors into Connect codes.
package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/rules"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// DefaultSystemPrefixes is the zero-config domain split: keys under "sys/"
// are system-domain, all others user-domain.
var DefaultSystemPrefixes = value.DefaultSystemPrefixes

// Config configures an Engine.
type Config struct {
	// Store holds the partitions. Required.
	Store store.Store
	// SystemPrefixes are the key prefixes only backends may write. Nil
	// means DefaultSystemPrefixes; an empty non-nil slice means none.
	SystemPrefixes []string
	// Limits are the sizes enforced; zero fields take the defaults.
	Limits Limits
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnCommit, when set, is called after each commit is durable, outside
	// the partition's lock. Calls for one partition may come in another
	// order than the versions: receivers must tolerate gaps and reordering.
	OnCommit func(CommitInfo)
}

// CommitInfo describes a durable commit to OnCommit.
type CommitInfo struct {
	Partition store.Partition
	Version   uint64
	// Device is the committing device's id; empty for a backend.
	Device string
	// Erase is set when the commit erased the partition.
	Erase bool
	// Changes is the new state of each key the commit changed, in the
	// order first touched. Receivers must not modify them.
	Changes []*dalvv1.Change
}

// Engine applies DalvDB's rules to a store. It is safe for concurrent use.
type Engine struct {
	st  store.Store
	sys []string
	lim Limits
	now func() time.Time
	on  func(CommitInfo)
	// rules are the write rules in force; nil means none.
	rules atomic.Pointer[rules.Set]
}

// New returns an Engine for cfg. It does not modify cfg.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil {
		return nil, errors.New("engine: no store")
	}
	e := &Engine{st: cfg.Store, lim: cfg.Limits.WithDefaults(), now: cfg.Now, on: cfg.OnCommit}
	if err := e.lim.Validate(); err != nil {
		return nil, err
	}
	e.sys = slices.Clone(cfg.SystemPrefixes)
	if cfg.SystemPrefixes == nil {
		e.sys = slices.Clone(DefaultSystemPrefixes)
	}
	for _, p := range e.sys {
		if p == "" {
			return nil, errors.New("engine: empty system prefix would make every key system-domain")
		}
	}
	if e.now == nil {
		e.now = time.Now
	}
	return e, nil
}

// Limits returns the limits in force, defaults filled in.
func (e *Engine) Limits() Limits { return e.lim }

// SystemPrefixes returns the system-domain key prefixes.
func (e *Engine) SystemPrefixes() []string { return slices.Clone(e.sys) }

// IsSystemKey reports whether key is system-domain.
func (e *Engine) IsSystemKey(key string) bool { return hasAnyPrefix(key, e.sys) }

// SyncRequest is one device sync; the partition comes from the caller's
// verified token, never from the request body.
type SyncRequest struct {
	Partition    store.Partition
	DeviceID     string
	BaseVersion  uint64
	Batch        uint64
	Ops          []*dalvv1.Op
	ResetHorizon uint64
	// Claims are the device token's claims, which write rules may read.
	Claims map[string]any
}

// Sync runs a device's sync: idempotency, authorisation, conflict check, an
// atomic durable apply, and an answer with the changes since the base
// version. A conflict is not an error: it is SYNC_STATUS_CONFLICT.
func (e *Engine) Sync(ctx context.Context, req SyncRequest) (*dalvv1.SyncResponse, error) {
	if err := value.ValidatePartitionName(req.Partition.Name); err != nil {
		return nil, err
	}
	if err := value.ValidateDeviceID(req.DeviceID); err != nil {
		return nil, err
	}
	if err := value.ValidateOps(req.Ops, e.lim); err != nil {
		return nil, err
	}
	if len(req.Ops) == 0 {
		return e.pull(ctx, req)
	}
	if req.Partition.Shared {
		return nil, Errorf(ErrPermission, "shared partition %q is read-only for devices; send no ops", req.Partition.Name)
	}
	if req.Batch == 0 {
		return nil, Errorf(ErrInvalid, "a sync with ops needs batch >= 1 (the device's increasing batch number)")
	}
	var (
		resp    *dalvv1.SyncResponse
		applied uint64
		changes []*keyState
	)
	err := e.st.Update(ctx, req.Partition, func(r store.Reader) (*store.Commit, error) {
		resp, applied, changes = &dalvv1.SyncResponse{Status: dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED}, 0, nil
		head, err := r.Head()
		if err != nil {
			return nil, err
		}
		// 1. Idempotency: a batch applied before is answered, not applied.
		last, err := r.DeviceBatch(req.DeviceID)
		if err != nil {
			return nil, err
		}
		if req.Batch <= last {
			return nil, e.collect(r, head, req.BaseVersion, req.ResetHorizon, nil, e.lim.MaxResponseBytes, resp)
		}
		// 2. Authorisation by domain.
		for _, op := range req.Ops {
			if e.IsSystemKey(op.GetKey()) {
				return nil, Errorf(ErrPermission, "key %q is system-domain (under a system prefix: %s); only backends may write it", op.GetKey(), strings.Join(e.sys, ", "))
			}
		}
		if req.BaseVersion > head.Version {
			return nil, Errorf(ErrInvalid, "baseVersion %d is ahead of the partition, which is at version %d; sync from 0", req.BaseVersion, head.Version)
		}
		// 3. Conflict check.
		ks, err := loadKeys(r, head, req.Ops)
		if err != nil {
			return nil, err
		}
		if conflicts := conflicts(ks, head, req.BaseVersion, req.Ops); len(conflicts) > 0 {
			resp.Status = dalvv1.SyncStatus_SYNC_STATUS_CONFLICT
			resp.Conflicts = conflicts
			return nil, e.collect(r, head, req.BaseVersion, req.ResetHorizon, nil, e.lim.MaxResponseBytes, resp)
		}
		// 4. Apply.
		c, own, err := e.apply(ks, head.Version+1, req.Ops, e.writeCheck(req.Partition, rules.Device, req.Claims))
		if err != nil {
			return nil, err
		}
		c.Device, c.Batch = req.DeviceID, req.Batch
		if err := e.collect(r, head, req.BaseVersion, req.ResetHorizon, commitOf(own), e.lim.MaxResponseBytes, resp); err != nil {
			return nil, err
		}
		applied, changes = c.Version, own
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	if applied != 0 {
		e.committed(CommitInfo{Partition: req.Partition, Version: applied, Device: req.DeviceID}, changes)
	}
	return resp, nil
}

func (e *Engine) committed(ci CommitInfo, own []*keyState) {
	if e.on == nil {
		return
	}
	ci.Changes = make([]*dalvv1.Change, len(own))
	for i, s := range own {
		ci.Changes[i] = &dalvv1.Change{Key: s.key, Value: s.val, Deleted: s.val == nil, Version: ci.Version}
	}
	e.on(ci)
}

func (e *Engine) pull(ctx context.Context, req SyncRequest) (*dalvv1.SyncResponse, error) {
	return e.Pull(ctx, req.Partition, req.BaseVersion, req.ResetHorizon)
}

// Pull answers what a sync with no ops answers: the changes after base, from
// a consistent snapshot, paged and reset as Sync does.
func (e *Engine) Pull(ctx context.Context, p store.Partition, base, resetHorizon uint64) (*dalvv1.SyncResponse, error) {
	return e.PullPage(ctx, p, base, resetHorizon, e.lim.MaxResponseBytes)
}

// PullPage is Pull with the answer cut at pageBytes instead of the response
// limit: streams send smaller pages, which bound the memory a stream holds
// while its reader is slow. As at the response limit, the cut falls between
// commits and a page holds at least one whole commit, so a page may pass
// pageBytes by one commit's changes, which never pass the response limit.
// A pageBytes below 1 or above the response limit means the response limit.
func (e *Engine) PullPage(ctx context.Context, p store.Partition, base, resetHorizon uint64, pageBytes int) (*dalvv1.SyncResponse, error) {
	pageBytes = e.pageBytes(pageBytes)
	resp := &dalvv1.SyncResponse{Status: dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED}
	err := e.st.View(ctx, p, func(r store.Reader) error {
		head, err := r.Head()
		if err != nil {
			return err
		}
		if base > head.Version {
			return Errorf(ErrInvalid, "version %d is ahead of the partition, which is at version %d; start from 0", base, head.Version)
		}
		return e.collect(r, head, base, resetHorizon, nil, pageBytes, resp)
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// pageBytes is the page size a stream asked for, n, as the engine reads
// pages: a page never passes the response limit, and n below 1 means it.
func (e *Engine) pageBytes(n int) int {
	if n < 1 || n > e.lim.MaxResponseBytes {
		return e.lim.MaxResponseBytes
	}
	return n
}

// keyState is what one commit knows of one key it reads or writes.
type keyState struct {
	key     string
	old     store.Entry // zero when the store held nothing
	present bool        // the store held an entry (live or tombstone)
	val     *dalvv1.Value
	changed bool
	scalar  bool // a PUT or DELETE in this commit
}

// keyStates holds the keys of one commit in the order first touched; lookups
// are linear because commits are mostly a handful of keys.
type keyStates struct {
	list  []*keyState
	index map[string]*keyState
}

func (ks *keyStates) get(key string) *keyState {
	if ks.index != nil {
		return ks.index[key]
	}
	for _, s := range ks.list {
		if s.key == key {
			return s
		}
	}
	return nil
}

func loadKeys(r store.Reader, head store.Head, ops []*dalvv1.Op) (*keyStates, error) {
	ks := &keyStates{list: make([]*keyState, 0, len(ops))}
	if len(ops) > 16 {
		ks.index = make(map[string]*keyState, len(ops))
	}
	for _, op := range ops {
		if ks.get(op.GetKey()) != nil {
			continue
		}
		ent, ok, err := r.Get(op.GetKey())
		if err != nil {
			return nil, err
		}
		s := &keyState{key: op.GetKey(), old: ent, present: ok}
		if !ok {
			// Its tombstone may have been dropped (by retention or an
			// erase) at any version up to the horizon: a list op that
			// recreates the key must still conflict with older bases.
			s.old.ScalarVersion = head.Horizon
		}
		if ok && !ent.Deleted {
			if s.val, err = value.Decode(ent.Value); err != nil {
				return nil, fmt.Errorf("%w: key %q: %v", store.ErrCorruption, s.key, err)
			}
		}
		ks.list = append(ks.list, s)
		if ks.index != nil {
			ks.index[s.key] = s
		}
	}
	return ks, nil
}

// conflicts returns the keys of ops changed by a commit after base, once
// each, in op order. List ops conflict only with a PUT or DELETE after base.
// A key the store holds nothing of conflicts when base is below the horizon,
// because a tombstone for it may have been dropped.
func conflicts(ks *keyStates, head store.Head, base uint64, ops []*dalvv1.Op) []string {
	var out []string
	for _, op := range ops {
		s := ks.get(op.GetKey())
		var changed bool
		switch {
		case !s.present:
			changed = base < head.Horizon
		case value.IsListOp(op.GetKind()):
			changed = s.old.ScalarVersion > base
		default:
			changed = s.old.Version > base
		}
		if changed && !slices.Contains(out, s.key) {
			out = append(out, s.key)
		}
	}
	return out
}

// apply runs ops over ks and returns the commit at version, and the keys it
// changes.
func (e *Engine) apply(ks *keyStates, version uint64, ops []*dalvv1.Op, chk *writeCheck) (*store.Commit, []*keyState, error) {
	for _, op := range ops {
		s := ks.get(op.GetKey())
		next, changed, err := value.Apply(s.val, op)
		if err != nil {
			if errors.Is(err, value.ErrNotList) {
				return nil, nil, Errorf(ErrState, "%v", err)
			}
			return nil, nil, Errorf(ErrInvalid, "%v", err)
		}
		after := s.val
		if changed {
			after = next
		}
		if err := chk.op(op, s.val, after); err != nil {
			return nil, nil, err
		}
		if changed {
			s.val, s.changed = next, true
			if !value.IsListOp(op.GetKind()) {
				s.scalar = true
			}
		}
	}
	c := &store.Commit{Version: version, Time: e.now(), Entries: make([]store.Entry, 0, len(ks.list))}
	own := make([]*keyState, 0, len(ks.list))
	size := 0
	for _, s := range ks.list {
		if !s.changed {
			continue
		}
		if n := value.Size(s.val); n > e.lim.MaxValueBytes {
			return nil, nil, Errorf(ErrLimit, "key %q would hold %d bytes, over the value limit of %d bytes (--max-value-bytes)", s.key, n, e.lim.MaxValueBytes)
		}
		ent := store.Entry{Key: s.key, Version: version, ScalarVersion: s.old.ScalarVersion, Deleted: s.val == nil}
		if s.scalar {
			ent.ScalarVersion = version
		}
		if s.val != nil {
			ent.Value = value.Encode(nil, s.val)
		}
		size += value.ChangeSize(s.key, s.val)
		c.Entries = append(c.Entries, ent)
		own = append(own, s)
	}
	if size > e.lim.MaxResponseBytes {
		return nil, nil, Errorf(ErrLimit, "the commit's changes are about %d bytes, over the response limit of %d bytes (--max-response-bytes); split it into smaller commits", size, e.lim.MaxResponseBytes)
	}
	ops2, err := proto.Marshal(&dalvv1.ChangeEvent{Ops: ops})
	if err != nil {
		return nil, nil, fmt.Errorf("encode ops: %w", err)
	}
	c.Ops = ops2
	return c, own, nil
}

// collect fills resp with the changes after base, collapsed to one entry per
// key and cut at limit bytes between commits, plus, when own is the commit
// being made, the keys it changes at head.Version+1, the answer's version
// even when it changes no key. Below the horizon it answers with a reset,
// or continues one when resetHorizon says so.
func (e *Engine) collect(r store.Reader, head store.Head, base, resetHorizon uint64, own *ownCommit, limit int, resp *dalvv1.SyncResponse) error {
	after, skipDeleted := base, false
	resp.Horizon = head.Horizon
	if base < head.Horizon {
		resp.Reset_ = true
		if resetHorizon != head.Horizon {
			after, skipDeleted = 0, true
		}
	}
	pg := pager{limit: limit, last: after}
	if after < head.Version {
		err := r.Changes(after, func(ent store.Entry) (bool, error) {
			if ent.Deleted && skipDeleted {
				return true, nil
			}
			if own != nil {
				for _, s := range own.keys {
					if s.key == ent.Key {
						return true, nil // the commit being made supersedes it
					}
				}
			}
			c, err := toChange(ent)
			if err != nil {
				return false, err
			}
			return pg.add(c), nil
		})
		if err != nil {
			return err
		}
	}
	version := head.Version
	if own != nil {
		// The commit being made takes the next version, even when its
		// ops change nothing (it records the device's batch).
		version++
		for _, s := range own.keys {
			if !pg.add(&dalvv1.Change{Key: s.key, Value: s.val, Deleted: s.val == nil, Version: version}) {
				break
			}
		}
	}
	pg.finish()
	resp.Changes = pg.out
	resp.More = pg.cut
	resp.Version = version
	if pg.cut {
		resp.Version = pg.last
	}
	return nil
}

// ownCommit is the commit a sync is making, for collect: the keys it
// changes (none when its ops change nothing; it still takes a version).
type ownCommit struct {
	keys []*keyState
}

// commitOf is the ownCommit of a commit that changes keys.
func commitOf(keys []*keyState) *ownCommit { return &ownCommit{keys: keys} }

// pager gathers changes in version order and cuts between commits once the
// next commit's changes would pass the limit. The first commit is always
// taken whole: the engine refuses commits whose changes could not fit.
type pager struct {
	limit   int
	out     []*dalvv1.Change
	size    int // of out
	group   []*dalvv1.Change
	gsize   int
	gver    uint64
	last    uint64 // version of the last whole commit in out
	cut     bool
	stopped bool
}

// add takes c and reports whether to go on.
func (p *pager) add(c *dalvv1.Change) bool {
	if p.stopped {
		return false
	}
	if c.Version != p.gver {
		if !p.flush() {
			return false
		}
		p.gver = c.Version
	}
	p.group = append(p.group, c)
	p.gsize += value.ChangeSize(c.Key, c.Value)
	return true
}

func (p *pager) flush() bool {
	if len(p.group) == 0 {
		return true
	}
	if len(p.out) > 0 && p.size+p.gsize > p.limit {
		p.cut, p.stopped = true, true
		return false
	}
	p.out = append(p.out, p.group...)
	p.size += p.gsize
	p.last = p.gver
	p.group, p.gsize = p.group[:0:0], 0
	return true
}

func (p *pager) finish() {
	if !p.stopped {
		p.flush()
	}
}
