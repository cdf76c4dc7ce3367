package client

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// Conflicts returns the deferred conflicts in the inbox, in key order. Each
// holds what the device had (Local), what the server had (Remote) and their
// common Base when the resolver deferred it, what conflicts (Fields: the
// JSON fields both sides changed, or the whole value) and the value with
// everything else merged (Merged); meanwhile the device shows the server's
// value for the key and keeps syncing every other key.
func (r *Replica) Conflicts() ([]Conflict, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	var out []Conflict
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktInbox).ForEach(func(k, v []byte) error {
			c, err := decodeConflict(string(k), v)
			if err != nil {
				return err
			}
			c.explain()
			out = append(out, *c)
			return nil
		})
	})
	return out, err
}

// Settle ends the deferred conflict on key with res, which must not be
// [Defer]: the key will hold res's value, written like a local write. If the
// server's value changed again since the conflict was deferred, the next
// sync meets that change as a new conflict, so the resolver sees it too.
func (r *Replica) Settle(key string, res Resolution) error {
	if res.deferred {
		return fmt.Errorf("settle %q: %w: Defer does not settle a conflict", key, ErrInvalid)
	}
	return r.settle(key, func(*Conflict) (*Value, *Conflict, error) { return res.value, nil, nil })
}

// SettleFields settles the deferred conflict on key field by field: each
// path of sides (a [FieldConflict].Path of the conflict) takes the value of
// the side named, and every field nobody conflicted on keeps what the
// merge of both sides gave it ([Conflict].Merged), so no change of either
// side is lost. A conflict that is not field by field has one field, the
// empty path, for the whole value.
//
// When sides names every conflicting field, the key holds the result,
// written like a local write (as with [Replica.Settle]); otherwise the
// conflict stays in the inbox with only the fields not yet chosen.
func (r *Replica) SettleFields(key string, sides map[string]Side) error {
	return r.settle(key, func(c *Conflict) (*Value, *Conflict, error) { return c.choose(sides) })
}

// settle ends or narrows the deferred conflict on key: decide returns the
// value the key holds, or the conflict to keep in the inbox instead.
func (r *Replica) settle(key string, decide func(*Conflict) (*Value, *Conflict, error)) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.RLock()
	cfg := r.cfg
	err := r.checkOpen()
	p := r.pend[key]
	r.mu.RUnlock()
	if err != nil {
		return err
	}
	var c *Conflict
	var remoteNow *Value
	err = r.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktInbox).Get([]byte(key))
		if b == nil {
			return fmt.Errorf("settle %q: %w", key, ErrNoConflict)
		}
		var err error
		if c, err = decodeConflict(key, b); err != nil {
			return err
		}
		remoteNow, _, err = getEntry(tx, "", key)
		return err
	})
	if err != nil {
		return err
	}
	v, rest, err := decide(c)
	if err != nil {
		return err
	}
	if rest != nil {
		err := r.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bktInbox).Put([]byte(key), encodeConflict(rest))
		})
		if err != nil {
			return fmt.Errorf("write to replica %s: %w", r.path, err)
		}
		return nil
	}
	var op *Op
	if p != nil || !equalValues(v, remoteNow) {
		op = &Op{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: key}
		if v != nil {
			op = &Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: proto.CloneOf(v)}
		}
		if err := cfg.checkKey(key); err != nil {
			return err
		}
		if err := checkOps([]*Op{op}, cfg); err != nil {
			return fmt.Errorf("settle %q: %w", key, err)
		}
	}
	var b *batch
	var np *pkey
	err = r.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bktInbox).Delete([]byte(key)); err != nil {
			return err
		}
		if op == nil {
			return nil
		}
		pending := tx.Bucket(bktPending)
		seq, err := nextBatchNo(tx)
		if err != nil {
			return err
		}
		b = &batch{seq: seq, no: seq, ops: []*Op{op}}
		enc, err := encodeBatch(b)
		if err != nil {
			return err
		}
		if err := pending.Put(seqKey(seq), enc); err != nil {
			return err
		}
		if p != nil {
			np = &pkey{base: p.base, u: p.u, ul: p.ul, ops: append(slices.Clone(p.ops), op), local: v}
		} else {
			np = &pkey{base: c.Remote, ops: []*Op{op}, local: v}
			if !equalValues(remoteNow, c.Remote) {
				np.u = c.Version + 1 // a remote change the application has not seen
			}
		}
		return tx.Bucket(bktPkeys).Put([]byte(key), encodePkey(np))
	})
	if err != nil {
		return fmt.Errorf("write to replica %s: %w", r.path, err)
	}
	r.mu.Lock()
	before := remoteNow
	if p != nil {
		before = p.local
	}
	if b != nil {
		r.queue = append(r.queue, b)
		r.pend[key] = np
	}
	r.inboxN--
	r.mu.Unlock()
	if b != nil {
		if !equalValues(before, v) {
			r.emit([]Change{{Key: key, Value: v}})
		}
		r.kickLoop()
	}
	return nil
}

// Refused returns the batches the server refused for a reason other than a
// conflict, oldest first.
func (r *Replica) Refused() ([]RefusedBatch, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	var out []RefusedBatch
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bktRefused).ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return corruptf("refused batch key %x", k)
			}
			rb, err := decodeRefused(binary.BigEndian.Uint64(k), v)
			if err != nil {
				return err
			}
			out = append(out, *rb)
			return nil
		})
	})
	return out, err
}

// DropRefused forgets the refused batch id, once the application has dealt
// with it.
func (r *Replica) DropRefused(id uint64) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.RLock()
	err := r.checkOpen()
	r.mu.RUnlock()
	if err != nil {
		return err
	}
	errNone := errors.New("none")
	err = r.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bktRefused)
		if b.Get(seqKey(id)) == nil {
			return errNone
		}
		return b.Delete(seqKey(id))
	})
	if errors.Is(err, errNone) {
		return fmt.Errorf("drop refused batch %d: no such batch", id)
	}
	if err != nil {
		return fmt.Errorf("write to replica %s: %w", r.path, err)
	}
	r.mu.Lock()
	r.refusedN--
	r.mu.Unlock()
	return nil
}
