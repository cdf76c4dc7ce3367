package client

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/dalvdb/dalv/value"
)

// Scalar returns a scalar value holding b.
func Scalar(b []byte) *Value { return value.Scalar(b) }

// List returns a list value holding items, in order.
func List(items ...[]byte) *Value { return value.List(items...) }

// applyOps returns base with ops applied, skipping ops that do not apply
// (a list op on a scalar left behind when a batch was set aside): the
// server refuses those, and reads show what it would hold.
func applyOps(base *Value, ops []*Op) *Value {
	v := base
	for _, op := range ops {
		if next, _, err := value.Apply(v, op); err == nil {
			v = next
		}
	}
	return v
}

// equalValues reports whether a and b hold the same, both nil included.
func equalValues(a, b *Value) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return proto.Equal(a, b)
}

// Get returns the value of key in the user's partition as the device sees
// it: the synced value with the device's pending writes applied. It works
// offline. A missing key is [ErrNotFound].
func (r *Replica) Get(key string) (*Value, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	v, err := r.getLocked("", key)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("get %q: %w", key, ErrNotFound)
	}
	return v, nil
}

// getLocked returns the local view of key in part, nil when absent; mu is
// held at least shared.
func (r *Replica) getLocked(part, key string) (*Value, error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	if part == "" {
		if p := r.pend[key]; p != nil {
			if p.local == nil {
				return nil, nil
			}
			return proto.CloneOf(p.local), nil
		}
	}
	return r.syncedValue(part, key)
}

// syncedValue reads the synced value of key in part from the file.
func (r *Replica) syncedValue(part, key string) (v *Value, err error) {
	defer guard(r.path, &err)()
	err = r.db.View(func(tx *bolt.Tx) error {
		var err error
		v, _, err = getEntry(tx, part, key)
		return err
	})
	return v, err
}

// kvBucket is the kv bucket of part.
func kvBucket(tx *bolt.Tx, part string) *bolt.Bucket {
	pb := tx.Bucket(bktParts).Bucket(partBucket(part))
	if pb == nil {
		return nil
	}
	return pb.Bucket(bktKV)
}

// getEntry reads one synced key: nil when absent.
func getEntry(tx *bolt.Tx, part, key string) (*Value, uint64, error) {
	kv := kvBucket(tx, part)
	if kv == nil {
		return nil, 0, nil
	}
	b := kv.Get([]byte(key))
	if b == nil {
		return nil, 0, nil
	}
	ver, v, err := decodeEntry(b)
	if err != nil {
		return nil, 0, fmt.Errorf("key %q: %w", key, err)
	}
	return v, ver, nil
}

// GetJSON decodes the JSON scalar at key into dst. A missing key is
// [ErrNotFound].
func (r *Replica) GetJSON(key string, dst any) error {
	v, err := r.Get(key)
	if err != nil {
		return err
	}
	if err := value.UnmarshalJSON(v, dst); err != nil {
		return fmt.Errorf("get %q: %w", key, err)
	}
	return nil
}

// List returns the keys under prefix in the user's partition, in key order,
// as the device sees them (pending writes included). An empty prefix lists
// every key.
func (r *Replica) List(prefix string) ([]Item, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.listLocked("", prefix)
}

func (r *Replica) listLocked(part, prefix string) (out []Item, err error) {
	if err := r.checkOpen(); err != nil {
		return nil, err
	}
	defer guard(r.path, &err)()
	err = r.db.View(func(tx *bolt.Tx) error {
		kv := kvBucket(tx, part)
		if kv == nil {
			return nil
		}
		c := kv.Cursor()
		p := []byte(prefix)
		for k, b := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, b = c.Next() {
			if part == "" && r.pend[string(k)] != nil {
				continue // the local view comes from the pending ops below
			}
			_, v, err := decodeEntry(b)
			if err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
			out = append(out, Item{Key: string(k), Value: v})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if part == "" {
		n := len(out)
		for k, p := range r.pend {
			if p.local != nil && strings.HasPrefix(k, prefix) {
				out = append(out, Item{Key: k, Value: proto.CloneOf(p.local)})
			}
		}
		if len(out) > n {
			sortItems(out)
		}
	}
	return out, nil
}

func sortItems(items []Item) {
	slices.SortFunc(items, func(a, b Item) int { return strings.Compare(a.Key, b.Key) })
}

// Shared returns a read-only view of the shared partition name, which
// [Options.Shared] must name.
func (r *Replica) Shared(name string) *Shared { return &Shared{r: r, name: name} }

// Shared is a read-only view of a shared partition: backends write it, the
// device keeps a copy. Its write methods always fail with [ErrReadOnly].
type Shared struct {
	r    *Replica
	name string
}

func (s *Shared) check() error {
	if !slices.Contains(s.r.opts.Shared, s.name) {
		return fmt.Errorf("shared partition %q: %w (add it to Options.Shared)", s.name, ErrNotShared)
	}
	return nil
}

// Get returns the value of key in the shared partition; a missing key is
// [ErrNotFound].
func (s *Shared) Get(key string) (*Value, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	s.r.mu.RLock()
	defer s.r.mu.RUnlock()
	v, err := s.r.getLocked(s.name, key)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("get %q in shared partition %q: %w", key, s.name, ErrNotFound)
	}
	return v, nil
}

// GetJSON decodes the JSON scalar at key into dst.
func (s *Shared) GetJSON(key string, dst any) error {
	v, err := s.Get(key)
	if err != nil {
		return err
	}
	return value.UnmarshalJSON(v, dst)
}

// List returns the keys under prefix in the shared partition, in key order.
func (s *Shared) List(prefix string) ([]Item, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	s.r.mu.RLock()
	defer s.r.mu.RUnlock()
	return s.r.listLocked(s.name, prefix)
}

// Version returns the partition version the device has synced to.
func (s *Shared) Version() uint64 {
	s.r.mu.RLock()
	defer s.r.mu.RUnlock()
	return s.r.versions[s.name]
}

// Subscribe calls fn with every change to a key under prefix in the shared
// partition; see [Replica.Subscribe].
func (s *Shared) Subscribe(prefix string, fn func(Change)) (cancel func()) {
	return s.r.subscribe(s.name, prefix, fn)
}

func (s *Shared) refuse(key string) error {
	return fmt.Errorf("write %q in shared partition %q: %w; only backends write shared partitions", key, s.name, ErrReadOnly)
}

// Put always fails: shared partitions are read-only on devices.
func (s *Shared) Put(key string, _ []byte) error { return s.refuse(key) }

// Delete always fails: shared partitions are read-only on devices.
func (s *Shared) Delete(key string) error { return s.refuse(key) }

// ListAdd always fails: shared partitions are read-only on devices.
func (s *Shared) ListAdd(key string, _ []byte) error { return s.refuse(key) }

// ListRemove always fails: shared partitions are read-only on devices.
func (s *Shared) ListRemove(key string, _ []byte) error { return s.refuse(key) }
