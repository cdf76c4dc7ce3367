package client

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"connectrpc.com/connect"
	bolt "go.etcd.io/bbolt"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/value"
)

// Sync exchanges with the server once: it sends the pending batches in
// order (resolving conflicts on the way), then pulls the user's partition
// and each shared partition until caught up, and exposes each new state at
// once. It returns nil when everything pending was acknowledged, set aside
// or deferred and every partition is caught up.
func (r *Replica) Sync(ctx context.Context) error {
	if r.cli == nil {
		return ErrNoServer
	}
	_, err, sharedErr := r.syncAll(ctx)
	return errors.Join(err, sharedErr)
}

// syncAll is Sync. err is about the user's partition; sharedErr about the
// shared ones, and shared lists those that synced, which the loop watches.
func (r *Replica) syncAll(ctx context.Context) (shared []string, err, sharedErr error) {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	n := r.beginSync()
	defer func() { r.syncDone(n, err, sharedErr) }()
	r.mu.RLock()
	err = r.checkOpen()
	r.mu.RUnlock()
	if err != nil {
		return nil, err, nil
	}
	caughtUp, err := r.push(ctx)
	if err != nil {
		return nil, err, nil
	}
	if !caughtUp {
		if err := r.pull(ctx, ""); err != nil {
			return nil, err, nil
		}
	}
	var errs []error
	for _, s := range r.opts.Shared {
		r.mu.RLock()
		readable := slices.Contains(r.cfg.readable, s)
		r.mu.RUnlock()
		if !readable {
			errs = append(errs, fmt.Errorf("the server does not let this token read shared partition %q (%w)", s, ErrNotShared))
			continue
		}
		if err := r.pull(ctx, s); err != nil {
			errs = append(errs, fmt.Errorf("shared partition %q: %w", s, err))
			continue
		}
		shared = append(shared, s)
	}
	return shared, nil, errors.Join(errs...)
}

// push sends the pending batches, head first, until none is left. caughtUp
// reports that the last answer applied brought the user's partition up to
// the server's head.
func (r *Replica) push(ctx context.Context) (caughtUp bool, err error) {
	rounds := 0
	for {
		b, err := r.headBatch()
		if b == nil || err != nil {
			return caughtUp, err
		}
		base := r.sentBase(b)
		r.sentSeq = b.seq
		resp, err := r.syncChecked(ctx, b, &dalvv1.SyncRequest{DeviceId: r.deviceID, BaseVersion: base, Batch: b.no, Ops: b.ops})
		if err != nil {
			if handled, err := r.refused(ctx, b, err); handled || err != nil {
				if err != nil {
					return false, err
				}
				continue
			}
			return false, fmt.Errorf("sync batch %d: %w", b.no, err)
		}
		r.limitHits = 0
		u, err := r.collect(ctx, "", base, resp)
		if err != nil {
			return false, err
		}
		switch resp.GetStatus() {
		case dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED:
			if err := r.applyRemote(u, b); err != nil {
				return false, err
			}
			delete(r.noMerge, b.seq)
			r.sentSeq, rounds, caughtUp = 0, 0, true
		case dalvv1.SyncStatus_SYNC_STATUS_CONFLICT:
			// The answer says the batch was not applied, and no request
			// with it is in flight: it may be rewritten.
			r.sentSeq = 0
			if err := r.applyRemote(u, nil); err != nil {
				return false, err
			}
			caughtUp = true
			if rounds++; rounds > r.opts.MaxConflictRounds {
				return false, fmt.Errorf("batch %d, keys %q: %w (%d rounds)", b.no, resp.GetConflicts(), ErrConflictRounds, r.opts.MaxConflictRounds)
			}
			if err := r.resolve(b, base, resp.GetConflicts(), u.version); err != nil {
				return false, err
			}
		default:
			return false, fmt.Errorf("sync batch %d: unexpected status %v", b.no, resp.GetStatus())
		}
	}
}

// headBatch returns the first pending batch, merged with the batches after
// it when it never reached the server, so that writes made offline go up
// in few requests. Merging keeps each transaction whole and in order.
func (r *Replica) headBatch() (*batch, error) {
	r.mu.RLock()
	q := slices.Clone(r.queue)
	cfg := r.cfg
	r.mu.RUnlock()
	if len(q) == 0 {
		return nil, nil
	}
	head := q[0]
	if head.seq == r.sentSeq || len(q) == 1 {
		return head, nil
	}
	ops := slices.Clone(head.ops)
	n := 1
	for ; n < len(q) && !r.noMerge[q[n].seq] && !r.noMerge[head.seq]; n++ {
		next := append(slices.Clone(ops), q[n].ops...)
		if len(next) > cfg.lim.MaxOps {
			break
		}
		if r.requestSize(next) > cfg.maxRequestBytes*3/4 || answerSize(r.valuesAfter(next)) > cfg.lim.MaxResponseBytes*3/4 {
			break
		}
		ops = next
	}
	if n == 1 {
		return head, nil
	}
	merged := &batch{seq: head.seq, no: head.no, ops: ops}
	for _, b := range q[:n] {
		merged.parts = append(merged.parts, b.partsOf()...)
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	err := r.db.Update(func(tx *bolt.Tx) error {
		pending := tx.Bucket(bktPending)
		enc, err := encodeBatch(merged)
		if err != nil {
			return err
		}
		if err := pending.Put(seqKey(merged.seq), enc); err != nil {
			return err
		}
		for _, b := range q[1:n] {
			if err := pending.Delete(seqKey(b.seq)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("write to replica %s: %w", r.path, err)
	}
	r.mu.Lock()
	r.queue = append([]*batch{merged}, r.queue[n:]...)
	r.mu.Unlock()
	return merged, nil
}

// renumber gives each batch of queue, in order, a fresh number and writes
// it to the pending bucket.
func renumber(tx *bolt.Tx, queue []*batch) error {
	pending := tx.Bucket(bktPending)
	for _, q := range queue {
		no, err := nextBatchNo(tx)
		if err != nil {
			return err
		}
		q.no = no
		enc, err := encodeBatch(q)
		if err != nil {
			return err
		}
		if err := pending.Put(seqKey(q.seq), enc); err != nil {
			return err
		}
	}
	return nil
}

// valuesAfter is what each key of ops holds after them, from the keys'
// bases: the size of the commit's answer is estimated from it.
func (r *Replica) valuesAfter(ops []*Op) map[string]*Value {
	r.mu.RLock()
	defer r.mu.RUnlock()
	vals := make(map[string]*Value)
	for _, op := range ops {
		k := op.GetKey()
		cur, ok := vals[k]
		if !ok {
			if p := r.pend[k]; p != nil {
				cur = p.base
			}
		}
		vals[k] = applyOps(cur, []*Op{op})
	}
	return vals
}

// sentBase is the base version to send b with: the version the device has
// synced to, lowered below the first remote change the device has not
// shown for each key of b that has one, so that the server flags those keys.
func (r *Replica) sentBase(b *batch) uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	base := r.versions[""]
	scalar := scalarKeys(b.ops)
	for _, op := range b.ops {
		p := r.pend[op.GetKey()]
		if p == nil || !p.dirty() {
			continue
		}
		upper := p.u
		if !scalar[op.GetKey()] && p.ul > upper {
			upper = p.ul // list ops conflict only with scalar changes
		}
		if upper-1 < base {
			base = upper - 1
		}
	}
	return base
}

// scalarKeys are the keys ops PUT or DELETE.
func scalarKeys(ops []*Op) map[string]bool {
	m := make(map[string]bool)
	for _, op := range ops {
		switch op.GetKind() {
		case dalvv1.OpKind_OP_KIND_PUT, dalvv1.OpKind_OP_KIND_DELETE:
			m[op.GetKey()] = true
		}
	}
	return m
}

// refused handles an error answer to batch b. A refusal that resending
// cannot change (permission, a bad op, a limit the batch breaks) sets the
// batch aside and reports handled; anything else is left to the caller to
// retry later.
func (r *Replica) refused(ctx context.Context, b *batch, err error) (handled bool, _ error) {
	switch connect.CodeOf(err) {
	case connect.CodePermissionDenied, connect.CodeFailedPrecondition:
		r.forgetVerified() // the domains may have changed: fetch them again
	case connect.CodeInvalidArgument:
		// The server's write rules may have changed: fetch them again.
		r.forgetVerified()
		// The server may have lost data and be behind the device's base
		// version; then the device resyncs and sends the batch again.
		perr := r.pull(ctx, "")
		if perr != nil {
			return false, perr
		}
		if r.resynced {
			r.resynced = false
			return true, nil
		}
	case connect.CodeResourceExhausted:
		// The server's rate limit answers resource_exhausted too: set the
		// batch aside only when it breaks the limits now in force, or
		// keeps being refused.
		r.forgetVerified()
		if verr := r.withToken(ctx, func(context.Context, string) error { return nil }); verr != nil {
			return false, verr
		}
		r.mu.RLock()
		cfg := r.cfg
		r.mu.RUnlock()
		r.limitHits++
		if cerr := r.checkBatch(cfg, b.ops, r.valuesAfter(b.ops)); cerr == nil && r.limitHits <= r.opts.MaxLimitRetries {
			return false, nil
		}
	default:
		return false, nil
	}
	r.limitHits = 0
	r.sentSeq = 0
	if len(b.parts) > 1 {
		// The server refused the merged batch without applying it:
		// its transactions go up again one by one.
		r.log.Info("merged batch refused; sending its parts one by one", "batch", b.no, "parts", len(b.parts), "err", err)
		return true, r.splitHead(b)
	}
	delete(r.noMerge, b.seq)
	return true, r.setAside(b, err)
}

// splitHead replaces the merged head batch b by its parts, with fresh
// numbers, never to be merged again.
func (r *Replica) splitHead(b *batch) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if len(r.queue) == 0 || r.queue[0].seq != b.seq {
		return fmt.Errorf("internal: batch %d is not the head of the queue", b.no)
	}
	parts := b.split()
	// Every batch after the head gets a fresh number too: numbers must keep
	// increasing along the queue, or the server would take a later batch
	// for one it already applied.
	queue := slices.Clone(parts)
	for _, q := range r.queue[1:] {
		c := *q
		queue = append(queue, &c)
	}
	err := r.db.Update(func(tx *bolt.Tx) error {
		pending := tx.Bucket(bktPending)
		if err := pending.Delete(seqKey(b.seq)); err != nil {
			return err
		}
		return renumber(tx, queue)
	})
	if err != nil {
		return fmt.Errorf("write to replica %s: %w", r.path, err)
	}
	r.mu.Lock()
	r.queue = queue
	r.mu.Unlock()
	for _, p := range parts {
		r.noMerge[p.seq] = true
	}
	return nil
}

// update is the net effect of one or more answers or watch events on a
// partition: each changed key's state at version, or the whole partition.
type update struct {
	part    string
	version uint64
	reset   bool
	changes map[string]*dalvv1.Change
}

func (u *update) add(changes []*dalvv1.Change) {
	for _, c := range changes {
		u.changes[c.GetKey()] = c
	}
}

// collect gathers an answer and, when it was cut at the response limit, the
// pages after it, following a reset across pages.
func (r *Replica) collect(ctx context.Context, part string, base uint64, resp *dalvv1.SyncResponse) (*update, error) {
	// A pull from 0 is the whole partition: what the device held goes.
	u := &update{part: part, reset: base == 0 || resp.GetReset_(), changes: make(map[string]*dalvv1.Change)}
	u.add(resp.GetChanges())
	var pages value.Pages
	pages.Add(resp)
	for resp.GetMore() {
		var err error
		resp, err = r.rpcSync(ctx, &dalvv1.SyncRequest{DeviceId: r.deviceID, BaseVersion: resp.GetVersion(), Shared: part, ResetHorizon: pages.ResetHorizon()})
		if err != nil {
			return nil, fmt.Errorf("pull the rest of the changes: %w", err)
		}
		if pages.Add(resp) {
			// The horizon moved: the server started the reset again.
			u.reset, u.changes = true, make(map[string]*dalvv1.Change)
		}
		u.add(resp.GetChanges())
	}
	u.version = resp.GetVersion()
	return u, nil
}

// pull brings part up to the server's head. A server that answers that the
// device's version is ahead of it lost data: the device then takes the
// whole partition again.
func (r *Replica) pull(ctx context.Context, part string) error {
	r.mu.RLock()
	base := r.versions[part]
	r.mu.RUnlock()
	resp, err := r.rpcSync(ctx, &dalvv1.SyncRequest{DeviceId: r.deviceID, BaseVersion: base, Shared: part})
	if err != nil && base > 0 && connect.CodeOf(err) == connect.CodeInvalidArgument {
		r.log.Warn("the server is behind the replica's version; taking the whole partition again", "partition", part, "version", base, "err", err)
		base = 0
		r.resynced = true
		resp, err = r.rpcSync(ctx, &dalvv1.SyncRequest{DeviceId: r.deviceID, Shared: part})
	}
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	u, err := r.collect(ctx, part, base, resp)
	if err != nil {
		return err
	}
	return r.applyRemote(u, nil)
}

// synced is one key's synced state before and after an update.
type synced struct {
	old, new *Value
	version  uint64
}

// applyRemote applies u to the file and memory in one transaction. acc,
// when set, is the head batch, which u's answer acknowledged.
//
// For keys with pending ops, the synced value changes but what reads show
// does not: a remote change the device has not shown is recorded (the
// key's bound u), so the next sync sends a base version that makes the
// server flag the key and the resolver sees it.
func (r *Replica) applyRemote(u *update, acc *batch) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.RLock()
	err := r.checkOpen()
	old := r.versions[u.part]
	own := u.part == ""
	r.mu.RUnlock()
	if err != nil {
		return err
	}
	if acc == nil && !u.reset && u.version <= old && len(u.changes) == 0 {
		return nil
	}
	if acc != nil && (len(r.queue) == 0 || r.queue[0].seq != acc.seq) {
		return fmt.Errorf("internal: acknowledged batch %d is not the head of the queue", acc.no)
	}
	keys := make([]string, 0, len(u.changes))
	for k := range u.changes {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(cmp.Compare(u.changes[a].GetVersion(), u.changes[b].GetVersion()), cmp.Compare(a, b))
	})
	changed := make(map[string]*synced)
	var order []string          // changed keys, in the order of their versions
	pkUpd := map[string]*pkey{} // new states of pending keys; nil: no longer pending
	var accKeys []string

	err = r.db.Update(func(tx *bolt.Tx) error {
		pb := tx.Bucket(bktParts).Bucket(partBucket(u.part))
		if pb == nil {
			return fmt.Errorf("internal: no bucket for partition %q", u.part)
		}
		kv := pb.Bucket(bktKV)
		if u.reset {
			var gone [][]byte
			c := kv.Cursor()
			for k, b := c.First(); k != nil; k, b = c.Next() {
				if ch, ok := u.changes[string(k)]; ok && !ch.GetDeleted() {
					continue
				}
				_, v, err := decodeEntry(b)
				if err != nil {
					return fmt.Errorf("key %q: %w", k, err)
				}
				gone = append(gone, slices.Clone(k))
				changed[string(k)] = &synced{old: v}
				order = append(order, string(k))
			}
			for _, k := range gone {
				if err := kv.Delete(k); err != nil {
					return err
				}
			}
		}
		for _, k := range keys {
			ch := u.changes[k]
			s := changed[k]
			if s == nil {
				prev := kv.Get([]byte(k))
				s = &synced{}
				if prev != nil {
					_, v, err := decodeEntry(prev)
					if err != nil {
						return fmt.Errorf("key %q: %w", k, err)
					}
					s.old = v
				}
				changed[k] = s
				order = append(order, k)
			}
			s.version = ch.GetVersion()
			if ch.GetDeleted() || ch.GetValue() == nil {
				if err := kv.Delete([]byte(k)); err != nil {
					return err
				}
				s.new = nil
				continue
			}
			if err := kv.Put([]byte(k), encodeEntry(ch.GetVersion(), ch.GetValue())); err != nil {
				return err
			}
			s.new = ch.GetValue()
		}
		if err := pb.Put(keyVersion, binary.AppendUvarint(nil, u.version)); err != nil {
			return err
		}
		if !own {
			return nil
		}
		syncedNow := func(k string) (*Value, uint64, error) {
			if s := changed[k]; s != nil {
				return s.new, s.version, nil
			}
			return getEntry(tx, "", k)
		}
		pk := tx.Bucket(bktPkeys)
		if acc != nil {
			if err := tx.Bucket(bktPending).Delete(seqKey(acc.seq)); err != nil {
				return err
			}
			byKey := opsByKey(acc.ops)
			for _, op := range acc.ops {
				k := op.GetKey()
				if _, done := pkUpd[k]; done {
					continue
				}
				accKeys = append(accKeys, k)
				p := r.pend[k]
				if p == nil {
					return fmt.Errorf("internal: acknowledged op on %q without a pending-key record", k)
				}
				kops := byKey[k]
				rest := p.ops[len(kops):]
				if len(rest) == 0 {
					pkUpd[k] = nil
					if err := pk.Delete([]byte(k)); err != nil {
						return err
					}
					continue
				}
				// Later batches write the key too: they apply to what
				// the device expected this batch to leave. If the server
				// holds something else (remote list ops merged in), that
				// is a remote change the device has not shown.
				expected := applyOps(p.base, kops)
				now, ver, err := syncedNow(k)
				if err != nil {
					return err
				}
				np := &pkey{base: expected, ops: rest, local: p.local}
				if !equalValues(now, expected) {
					np.u = max(ver, 1)
				}
				pkUpd[k] = np
				if err := pk.Put([]byte(k), encodePkey(np)); err != nil {
					return err
				}
			}
		}
		mark := func(k string, p *pkey) error {
			if _, done := pkUpd[k]; done || p.dirty() {
				return nil
			}
			s := changed[k]
			if s == nil || equalValues(s.new, p.base) {
				return nil
			}
			np := *p
			np.u = old + 1
			if s.new != nil && s.version > 0 && s.version < np.u {
				np.u = s.version // a server that lost data: its versions restarted
			}
			pkUpd[k] = &np
			return pk.Put([]byte(k), encodePkey(&np))
		}
		if u.reset || len(changed) > len(r.pend) {
			for k, p := range r.pend {
				if err := mark(k, p); err != nil {
					return err
				}
			}
		} else {
			for k := range changed {
				if p := r.pend[k]; p != nil {
					if err := mark(k, p); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write to replica %s: %w", r.path, err)
	}

	// Publish, and tell subscribers what reads now show differently.
	var out []Change
	r.mu.Lock()
	before := make(map[string]*Value)
	view := func(k string) (*Value, bool) {
		if p := r.pend[k]; own && p != nil {
			return p.local, true
		}
		return nil, false
	}
	for _, k := range order {
		if v, ok := view(k); ok {
			before[k] = v
		} else {
			before[k] = changed[k].old
		}
	}
	for k := range pkUpd {
		if _, ok := before[k]; !ok {
			v, _ := view(k)
			before[k] = v
		}
	}
	r.versions[u.part] = u.version
	if acc != nil {
		r.queue = r.queue[1:]
	}
	for k, np := range pkUpd {
		if np == nil {
			delete(r.pend, k)
		} else {
			r.pend[k] = np
		}
	}
	emitKey := func(k string) {
		after, ok := view(k)
		if !ok {
			if s := changed[k]; s != nil {
				after = s.new
			} else {
				var err error
				if after, _, err = getEntryView(r.db, u.part, k); err != nil {
					r.log.Error("read replica", "key", k, "err", err)
					return
				}
			}
		}
		if !equalValues(before[k], after) {
			out = append(out, Change{Partition: u.part, Key: k, Value: after, Remote: true})
		}
	}
	for _, k := range order {
		emitKey(k)
	}
	for _, k := range accKeys {
		if changed[k] == nil {
			emitKey(k)
		}
	}
	r.mu.Unlock()
	r.emit(out)
	return nil
}

// getEntryView reads one synced key in its own read transaction.
func getEntryView(db *bolt.DB, part, key string) (v *Value, ver uint64, err error) {
	defer guard(db.Path(), &err)()
	err = db.View(func(tx *bolt.Tx) error {
		v, ver, err = getEntry(tx, part, key)
		return err
	})
	return v, ver, err
}

// opsByKey groups ops by key, each group in order.
func opsByKey(ops []*Op) map[string][]*Op {
	m := make(map[string][]*Op)
	for _, op := range ops {
		m[op.GetKey()] = append(m[op.GetKey()], op)
	}
	return m
}

// setAside moves the head batch b, which the server refused, to the refused
// bucket; its ops no longer show in reads, and the next batch goes on.
func (r *Replica) setAside(b *batch, cause error) error {
	rb := &RefusedBatch{ID: b.seq, Ops: b.ops, Code: connect.CodeOf(cause).String(), Message: cause.Error(), At: r.opts.Now()}
	var ce *connect.Error
	if errors.As(cause, &ce) {
		rb.Message = ce.Message()
	}
	r.log.Warn("batch refused by the server; set aside", "batch", b.no, "code", rb.Code, "message", rb.Message)
	if err := r.dropHead(b, func(tx *bolt.Tx) error {
		enc, err := encodeRefused(rb)
		if err != nil {
			return err
		}
		return tx.Bucket(bktRefused).Put(seqKey(b.seq), enc)
	}); err != nil {
		return err
	}
	r.mu.Lock()
	r.refusedN++
	r.mu.Unlock()
	r.setRefused(*rb)
	if r.opts.OnRefused != nil {
		r.opts.OnRefused(*rb)
	}
	return nil
}

// dropHead removes the head batch b and its ops from the pending keys, plus
// whatever also does in the same transaction.
func (r *Replica) dropHead(b *batch, also func(*bolt.Tx) error) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if len(r.queue) == 0 || r.queue[0].seq != b.seq {
		return fmt.Errorf("internal: batch %d is not the head of the queue", b.no)
	}
	byKey := opsByKey(b.ops)
	pkUpd := make(map[string]*pkey)
	err := r.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bktPending).Delete(seqKey(b.seq)); err != nil {
			return err
		}
		pk := tx.Bucket(bktPkeys)
		for k, kops := range byKey {
			p := r.pend[k]
			rest := p.ops[len(kops):]
			if len(rest) == 0 {
				pkUpd[k] = nil
				if err := pk.Delete([]byte(k)); err != nil {
					return err
				}
				continue
			}
			np := &pkey{base: p.base, u: p.u, ul: p.ul, ops: rest, local: applyOps(p.base, rest)}
			pkUpd[k] = np
			if err := pk.Put([]byte(k), encodePkey(np)); err != nil {
				return err
			}
		}
		return also(tx)
	})
	if err != nil {
		return fmt.Errorf("write to replica %s: %w", r.path, err)
	}
	var out []Change
	r.mu.Lock()
	r.queue = r.queue[1:]
	for _, op := range b.ops {
		k := op.GetKey()
		np, ok := pkUpd[k]
		if !ok {
			continue
		}
		delete(pkUpd, k)
		if c, changed := r.setPendingLocked(k, np); changed {
			out = append(out, c)
		}
	}
	r.mu.Unlock()
	r.emit(out)
	return nil
}
