package client

import (
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// Resolver decides what a conflicting key should hold. It is called once
// per conflicting key, from the goroutine that syncs, with the base, local
// and remote values; it returns [Use] of a value (nil deletes the key) or
// [Defer] to keep the conflict in the inbox for the application to settle
// later ([Replica.Conflicts], [Replica.Settle]). Any function of this type
// is a resolver; [ServerWins], [ClientWins] and [MergeJSON] are built in.
//
// A resolver must not call Sync or write to the replica; it may read it.
type Resolver func(c Conflict) Resolution

// Resolution is a resolver's decision for one key.
type Resolution struct {
	value    *Value
	deferred bool
}

// Use resolves a conflict with v: the key will hold v (nil: absent) on the
// device and, after the next sync, on the server.
func Use(v *Value) Resolution { return Resolution{value: v} }

// Defer keeps a conflict for later: the device shows the server's value,
// drops its own pending ops on the key, and keeps base, local and remote in
// the inbox until the application settles it.
func Defer() Resolution { return Resolution{deferred: true} }

// Deferred reports whether the resolution is [Defer].
func (r Resolution) Deferred() bool { return r.deferred }

// Value is the value a resolution holds; nil for [Defer] or a deletion.
func (r Resolution) Value() *Value { return r.value }

// ServerWins is a [Resolver] that keeps the server's value: the device's
// pending ops on the key are dropped.
func ServerWins(c Conflict) Resolution { return Use(c.Remote) }

// ClientWins is a [Resolver] that keeps the device's value, overwriting the
// remote change.
func ClientWins(c Conflict) Resolution { return Use(c.Local) }

// decision is what to do with one conflicting key.
type decision struct {
	c   Conflict
	res Resolution
}

// resolve handles a CONFLICT answer to the head batch b sent with base,
// after the answer's changes were applied at version: it asks the resolver
// about each key that really conflicts and rewrites the pending batches.
//
// A flagged key is a real conflict when the device holds an unseen remote
// change for it (it is dirty) and base was not below the first such change
// (else the flag may come from a change the device had seen). Dirty keys
// of b that were not flagged learn that the server holds no unseen change
// that conflicts with their ops, which lets the next base rise.
func (r *Replica) resolve(b *batch, base uint64, flagged []string, version uint64) error {
	scalar := scalarKeys(b.ops)
	var calls []Conflict
	var cleans, lifts []string
	r.mu.RLock()
	maxSeq := r.queue[len(r.queue)-1].seq
	isFlagged := make(map[string]bool)
	for _, k := range flagged {
		if isFlagged[k] {
			continue
		}
		isFlagged[k] = true
		p := r.pend[k]
		if p == nil || !p.dirty() || base+1 < p.u {
			continue
		}
		remote, _, err := getEntryView(r.db, "", k)
		if err != nil {
			r.mu.RUnlock()
			return err
		}
		if equalValues(remote, p.base) {
			cleans = append(cleans, k) // the remote changes undid themselves
			continue
		}
		calls = append(calls, Conflict{Key: k, Base: cloneValue(p.base), Local: cloneValue(p.local), Remote: remote, Version: version})
	}
	seen := make(map[string]bool)
	for _, op := range b.ops {
		k := op.GetKey()
		if isFlagged[k] || seen[k] {
			continue
		}
		seen[k] = true
		p := r.pend[k]
		if p == nil || !p.dirty() {
			continue
		}
		if !scalar[k] {
			lifts = append(lifts, k) // no scalar change since its bound
		} else if base+1 >= p.u {
			cleans = append(cleans, k) // no change at all since its bound
		}
	}
	r.mu.RUnlock()

	resolver := r.opts.Resolver
	if resolver == nil {
		resolver = func(Conflict) Resolution { return Defer() }
	}
	decisions := make([]decision, 0, len(calls))
	for _, c := range calls {
		res := resolver(c)
		r.log.Debug("conflict resolved", "key", c.Key, "deferred", res.deferred)
		decisions = append(decisions, decision{c: c, res: res})
	}
	return r.rewrite(b, maxSeq, decisions, cleans, lifts, version)
}

func cloneValue(v *Value) *Value {
	if v == nil {
		return nil
	}
	return proto.CloneOf(v)
}

// rewrite applies resolutions: the conflicting keys' ops in the batches up
// to maxSeq (those the resolver saw) are replaced by one op in the head
// batch b that sets the chosen value, or by an inbox entry; the batches are
// renumbered, since b was rewritten after it was refused.
func (r *Replica) rewrite(b *batch, maxSeq uint64, decisions []decision, cleans, lifts []string, version uint64) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.RLock()
	cfg := r.cfg
	err := r.checkOpen()
	r.mu.RUnlock()
	if err != nil {
		return err
	}
	if len(r.queue) == 0 || r.queue[0].seq != b.seq {
		return fmt.Errorf("internal: conflicting batch %d is not the head of the queue", b.no)
	}
	now := r.opts.Now()
	decided := make(map[string]bool)
	var headOps []*Op
	var inbox []*Conflict
	pkUpd := make(map[string]*pkey)
	for i := range decisions {
		d := &decisions[i]
		k := d.c.Key
		decided[k] = true
		// The key's ops in batches after maxSeq were written while the
		// resolver ran: they apply to the resolution.
		var later []*Op
		for _, q := range r.queue {
			if q.seq > maxSeq {
				for _, op := range q.ops {
					if op.GetKey() == k {
						later = append(later, op)
					}
				}
			}
		}
		var ops []*Op
		if !d.res.deferred {
			v := d.res.value
			if !equalValues(v, d.c.Remote) {
				op := &Op{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: k}
				if v != nil {
					op = &Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: k, Value: proto.CloneOf(v)}
				}
				if err := checkOps([]*Op{op}, cfg); err != nil {
					d.res = Defer()
					d.c.Note = fmt.Sprintf("the resolver's value was refused: %v", err)
				} else {
					ops = append(ops, op)
					headOps = append(headOps, op)
				}
			}
		}
		if d.res.deferred {
			c := d.c
			c.At = now
			inbox = append(inbox, &c)
		}
		ops = append(ops, later...)
		if len(ops) == 0 {
			pkUpd[k] = nil
		} else {
			pkUpd[k] = &pkey{base: d.c.Remote, ops: ops, local: applyOps(d.c.Remote, ops)}
		}
	}
	for _, k := range cleans {
		p := r.pend[k]
		if p == nil || decided[k] {
			continue
		}
		remote, _, err := getEntryView(r.db, "", k)
		if err != nil {
			return err
		}
		pkUpd[k] = &pkey{base: remote, ops: p.ops, local: applyOps(remote, p.ops)}
	}
	for _, k := range lifts {
		p := r.pend[k]
		if p == nil || decided[k] {
			continue
		}
		np := *p
		np.ul = version + 1
		pkUpd[k] = &np
	}

	// The new queue: decided keys' ops leave the batches up to maxSeq.
	var queue []*batch
	var gone []uint64
	rewritten := len(decided) > 0
	for _, q := range r.queue {
		nb := q
		if rewritten {
			// New structs: the old ones stay as they were until the
			// file has the new queue.
			nb = &batch{seq: q.seq, no: q.no}
			ops := q.ops
			for i, p := range q.partsOf() {
				mine := ops[:p.n]
				ops = ops[p.n:]
				if q.seq <= maxSeq {
					mine = slices.DeleteFunc(slices.Clone(mine), func(op *Op) bool { return decided[op.GetKey()] })
				}
				if q.seq == b.seq && i == len(q.partsOf())-1 {
					mine = append(mine, headOps...)
				}
				if len(mine) > 0 {
					nb.ops = append(nb.ops, mine...)
					nb.parts = append(nb.parts, part{seq: p.seq, n: len(mine)})
				}
			}
			if len(nb.parts) == 1 {
				// One part left: it keeps the batch's sequence.
				nb.parts = nil
			}
		}
		if len(nb.ops) == 0 {
			gone = append(gone, q.seq)
			continue
		}
		queue = append(queue, nb)
	}
	var inboxAdded int
	err = r.db.Update(func(tx *bolt.Tx) error {
		pending := tx.Bucket(bktPending)
		for _, seq := range gone {
			if err := pending.Delete(seqKey(seq)); err != nil {
				return err
			}
		}
		if rewritten {
			// Fresh numbers: no request with the old ones can then
			// apply a version of a batch the device no longer holds.
			if err := renumber(tx, queue); err != nil {
				return err
			}
		}
		pk := tx.Bucket(bktPkeys)
		for k, np := range pkUpd {
			if np == nil {
				if err := pk.Delete([]byte(k)); err != nil {
					return err
				}
				continue
			}
			if err := pk.Put([]byte(k), encodePkey(np)); err != nil {
				return err
			}
		}
		ib := tx.Bucket(bktInbox)
		for _, c := range inbox {
			if ib.Get([]byte(c.Key)) == nil {
				inboxAdded++
			}
			if err := ib.Put([]byte(c.Key), encodeConflict(c)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write to replica %s: %w", r.path, err)
	}
	var out []Change
	r.mu.Lock()
	r.queue = queue
	for k, np := range pkUpd {
		if c, changed := r.setPendingLocked(k, np); changed {
			out = append(out, c)
		}
	}
	r.inboxN += inboxAdded
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Change) int { return strings.Compare(a.Key, b.Key) })
	r.emit(out)
	return nil
}

// setPendingLocked records np as key's pending state (nil: none left, the
// synced value shows again) and returns the change a reader sees, if any.
// r.mu must be held.
func (r *Replica) setPendingLocked(k string, np *pkey) (Change, bool) {
	before := r.pend[k].local
	var after *Value
	if np == nil {
		delete(r.pend, k)
		v, _, err := getEntryView(r.db, "", k)
		if err != nil {
			r.log.Error("read replica", "key", k, "err", err)
		}
		after = v
	} else {
		r.pend[k] = np
		after = np.local
	}
	return Change{Key: k, Value: after}, !equalValues(before, after)
}
