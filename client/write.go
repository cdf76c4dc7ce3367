package client

import (
	"errors"
	"fmt"
	"math"
	"strings"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/value"
)

// Tx is a transaction of local writes, built inside [Replica.Update]: its
// reads see the replica with the transaction's own writes applied, and its
// writes become one pending batch, durable together and sent to the server
// as one commit (never split). A Tx is valid only inside its Update call and
// is not safe for concurrent use.
type Tx struct {
	r    *Replica
	cfg  config
	ops  []*Op
	vals map[string]*Value // the transaction's view of each key it wrote
	done bool
}

// Get returns key's value as the transaction sees it; a missing key is
// [ErrNotFound].
func (tx *Tx) Get(key string) (*Value, error) {
	v, err := tx.view(key)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("get %q: %w", key, ErrNotFound)
	}
	return proto.CloneOf(v), nil
}

// GetJSON decodes the JSON scalar at key into dst.
func (tx *Tx) GetJSON(key string, dst any) error {
	v, err := tx.Get(key)
	if err != nil {
		return err
	}
	if err := value.UnmarshalJSON(v, dst); err != nil {
		return fmt.Errorf("get %q: %w", key, err)
	}
	return nil
}

// List returns the keys under prefix as the transaction sees them.
func (tx *Tx) List(prefix string) ([]Item, error) {
	items, err := tx.r.List(prefix)
	if err != nil {
		return nil, err
	}
	if len(tx.vals) == 0 {
		return items, nil
	}
	m := make(map[string]*Value, len(items))
	for _, it := range items {
		m[it.Key] = it.Value
	}
	for k, v := range tx.vals {
		if strings.HasPrefix(k, prefix) {
			m[k] = v
		}
	}
	out := make([]Item, 0, len(m))
	for k, v := range m {
		if v != nil {
			out = append(out, Item{Key: k, Value: proto.CloneOf(v)})
		}
	}
	sortItems(out)
	return out, nil
}

func (tx *Tx) view(key string) (*Value, error) {
	if tx.done {
		return nil, errors.New("transaction used after its Update returned")
	}
	if v, ok := tx.vals[key]; ok {
		return v, nil
	}
	tx.r.mu.RLock()
	defer tx.r.mu.RUnlock()
	return tx.r.getLocked("", key)
}

// Put sets key to the scalar b.
func (tx *Tx) Put(key string, b []byte) error {
	return tx.add(&Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: value.Scalar(b)})
}

// PutValue sets key to v, a scalar or a list.
func (tx *Tx) PutValue(key string, v *Value) error {
	if v == nil {
		return fmt.Errorf("put %q: %w: nil value (use Delete)", key, ErrInvalid)
	}
	return tx.add(&Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: proto.CloneOf(v)})
}

// PutJSON sets key to v encoded as JSON.
func (tx *Tx) PutJSON(key string, v any) error {
	val, err := value.JSON(v)
	if err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return tx.add(&Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: key, Value: val})
}

// Delete removes key.
func (tx *Tx) Delete(key string) error {
	return tx.add(&Op{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: key})
}

// ListAdd appends elem to the list at key unless it is already there. List
// ops from several devices merge on the server without a conflict.
func (tx *Tx) ListAdd(key string, elem []byte) error {
	return tx.add(&Op{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: key, Value: value.Scalar(elem)})
}

// ListRemove removes elem from the list at key if it is there.
func (tx *Tx) ListRemove(key string, elem []byte) error {
	return tx.add(&Op{Kind: dalvv1.OpKind_OP_KIND_LIST_REMOVE, Key: key, Value: value.Scalar(elem)})
}

// add checks op and applies it to the transaction's view. A refused op is
// not part of the transaction.
func (tx *Tx) add(op *Op) error {
	key := op.GetKey()
	if tx.done {
		return fmt.Errorf("write %q: transaction used after its Update returned", key)
	}
	if err := tx.cfg.checkKey(key); err != nil {
		return err
	}
	if err := checkOps([]*Op{op}, tx.cfg); err != nil {
		return err
	}
	cur, err := tx.view(key)
	if err != nil {
		return err
	}
	next, _, err := value.Apply(cur, op)
	if err != nil {
		if errors.Is(err, value.ErrNotList) {
			return fmt.Errorf("write %q: %w: %v", key, ErrNotList, err)
		}
		return fmt.Errorf("write %q: %w: %v", key, ErrInvalid, err)
	}
	if n := value.Size(next); n > tx.cfg.lim.MaxValueBytes {
		return fmt.Errorf("write %q: %w: the key would hold %d bytes, over the value limit of %d bytes", key, ErrLimit, n, tx.cfg.lim.MaxValueBytes)
	}
	if err := tx.cfg.checkRules(op, cur, next); err != nil {
		return err
	}
	if tx.vals == nil {
		tx.vals = make(map[string]*Value)
	}
	tx.vals[key] = next
	tx.ops = append(tx.ops, op)
	return nil
}

// checkKey refuses a key the device may not write.
func (c *config) checkKey(key string) error {
	if err := value.ValidateKey(key, c.lim.MaxKeyBytes); err != nil {
		return fmt.Errorf("write %.60q: %w", key, ruleErr(err))
	}
	if p, ok := c.systemPrefix(key); ok {
		return fmt.Errorf("write %q: %w (it is under the system prefix %q, which only backends write)", key, ErrSystemKey, p)
	}
	return nil
}

// ruleErr turns an error of the server's shared checks (package value) into
// one of ours.
func ruleErr(err error) error {
	switch {
	case errors.Is(err, value.ErrLimit):
		return fmt.Errorf("%w: %v", ErrLimit, err)
	case errors.Is(err, value.ErrInvalid):
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return err
}

// checkOps runs the server's own shape and limit checks on ops.
func checkOps(ops []*Op, c config) error {
	if err := value.ValidateOps(ops, c.lim); err != nil {
		return ruleErr(err)
	}
	return nil
}

// checkBatch checks a whole batch against the server's limits: the op
// count, the request size, and the size of the answer its commit makes
// (vals holds each key's value after the batch).
func (r *Replica) checkBatch(c config, ops []*Op, vals map[string]*Value) error {
	if err := checkOps(ops, c); err != nil {
		return err
	}
	if n := r.requestSize(ops); n > c.maxRequestBytes {
		return fmt.Errorf("%w: the transaction's request would be %d bytes, over the request limit of %d bytes; split it", ErrLimit, n, c.maxRequestBytes)
	}
	if n := answerSize(vals); n > c.lim.MaxResponseBytes {
		return fmt.Errorf("%w: the transaction's changes are about %d bytes, over the server's answer limit of %d bytes; split it", ErrLimit, n, c.lim.MaxResponseBytes)
	}
	for k, v := range vals {
		if n := value.Size(v); n > c.lim.MaxValueBytes {
			return fmt.Errorf("write %q: %w: the key would hold %d bytes, over the value limit of %d bytes", k, ErrLimit, n, c.lim.MaxValueBytes)
		}
	}
	return nil
}

// answerSize estimates the bytes the server counts for a commit's changes
// against its answer limit.
func answerSize(vals map[string]*Value) int {
	n := 0
	for k, v := range vals {
		n += value.ChangeSize(k, v)
	}
	return n
}

// requestSize bounds the encoded size of a sync request carrying ops, with
// the largest base version and batch number.
func (r *Replica) requestSize(ops []*Op) int {
	return proto.Size(&dalvv1.SyncRequest{DeviceId: r.deviceID, BaseVersion: math.MaxUint64, Batch: math.MaxUint64, Ops: ops})
}

// Update runs fn as one transaction of local writes. If fn returns nil and
// wrote something, the writes become one pending batch, durable in the
// file (fsynced) before Update returns, and the sync loop is woken. If fn
// returns an error, nothing is written. fn must not call other write
// methods of the replica.
func (r *Replica) Update(fn func(tx *Tx) error) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.RLock()
	err := r.checkOpen()
	cfg := r.cfg
	r.mu.RUnlock()
	if err != nil {
		return err
	}
	tx := &Tx{r: r, cfg: cfg}
	err = fn(tx)
	tx.done = true
	if err != nil {
		return err
	}
	if len(tx.ops) == 0 {
		return nil
	}
	if err := r.checkBatch(cfg, tx.ops, tx.vals); err != nil {
		return err
	}
	if err := r.commitLocal(tx.ops, tx.vals); err != nil {
		return err
	}
	r.kickLoop()
	return nil
}

// commitLocal makes ops a durable pending batch; wmu is held.
func (r *Replica) commitLocal(ops []*Op, vals map[string]*Value) error {
	// The local view before, for subscribers.
	r.mu.RLock()
	before := make(map[string]*Value, len(vals))
	for k := range vals {
		v, err := r.getLocked("", k)
		if err != nil {
			r.mu.RUnlock()
			return err
		}
		before[k] = v
	}
	r.mu.RUnlock()

	var b *batch
	fresh := make(map[string]*pkey)
	err := r.db.Update(func(btx *bolt.Tx) error {
		pending := btx.Bucket(bktPending)
		seq, err := nextBatchNo(btx)
		if err != nil {
			return err
		}
		b = &batch{seq: seq, no: seq, ops: ops}
		enc, err := encodeBatch(b)
		if err != nil {
			return err
		}
		if err := pending.Put(seqKey(seq), enc); err != nil {
			return err
		}
		pk := btx.Bucket(bktPkeys)
		for _, op := range ops {
			k := op.GetKey()
			if r.pend[k] != nil || fresh[k] != nil {
				continue
			}
			base, _, err := getEntry(btx, "", k)
			if err != nil {
				return err
			}
			p := &pkey{base: base}
			fresh[k] = p
			if err := pk.Put([]byte(k), encodePkey(p)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write to replica %s: %w", r.path, err)
	}
	r.mu.Lock()
	r.queue = append(r.queue, b)
	for k, p := range fresh {
		r.pend[k] = p
	}
	for _, op := range ops {
		p := r.pend[op.GetKey()]
		p.ops = append(p.ops, op)
	}
	for k, v := range vals {
		r.pend[k].local = v
	}
	r.mu.Unlock()

	var changes []Change
	for _, op := range ops {
		k := op.GetKey()
		if v, ok := vals[k]; ok {
			if !equalValues(before[k], v) {
				changes = append(changes, Change{Key: k, Value: v})
			}
			delete(vals, k) // once per key, in the order first written
		}
	}
	r.emit(changes)
	return nil
}

// nextBatchNo takes the next value of the pending bucket's sequence, which
// keys new batches and numbers every batch: increasing, from 1, never
// reused, and kept in the bucket's header, which each write dirties anyway.
func nextBatchNo(btx *bolt.Tx) (uint64, error) {
	return btx.Bucket(bktPending).NextSequence()
}

// Put sets key to the scalar b in one transaction.
func (r *Replica) Put(key string, b []byte) error {
	return r.Update(func(tx *Tx) error { return tx.Put(key, b) })
}

// PutValue sets key to v, a scalar or a list, in one transaction.
func (r *Replica) PutValue(key string, v *Value) error {
	return r.Update(func(tx *Tx) error { return tx.PutValue(key, v) })
}

// PutJSON sets key to v encoded as JSON in one transaction.
func (r *Replica) PutJSON(key string, v any) error {
	return r.Update(func(tx *Tx) error { return tx.PutJSON(key, v) })
}

// Delete removes key in one transaction.
func (r *Replica) Delete(key string) error {
	return r.Update(func(tx *Tx) error { return tx.Delete(key) })
}

// ListAdd appends elem to the list at key, unless present, in one
// transaction.
func (r *Replica) ListAdd(key string, elem []byte) error {
	return r.Update(func(tx *Tx) error { return tx.ListAdd(key, elem) })
}

// ListRemove removes elem from the list at key, if present, in one
// transaction.
func (r *Replica) ListRemove(key string, elem []byte) error {
	return r.Update(func(tx *Tx) error { return tx.ListRemove(key, elem) })
}
