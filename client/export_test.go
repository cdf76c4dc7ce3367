package client

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
)

// Check verifies that the replica's memory agrees with its file and with
// itself: the queue and the pending keys match their records, each pending
// key's ops are its ops in the queue, in order, and reads show base with
// ops applied. Tests call it after each test, as bbolt's tests check a
// database after every test.
func (r *Replica) Check() error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return nil
	}
	byKey := make(map[string][]*Op)
	for _, b := range r.queue {
		if len(b.ops) == 0 {
			return fmt.Errorf("batch %d (seq %d) is empty", b.no, b.seq)
		}
		for _, op := range b.ops {
			byKey[op.GetKey()] = append(byKey[op.GetKey()], op)
		}
	}
	if len(byKey) != len(r.pend) {
		return fmt.Errorf("%d keys in the queue, %d pending-key records", len(byKey), len(r.pend))
	}
	for k, p := range r.pend {
		ops := byKey[k]
		if len(ops) != len(p.ops) {
			return fmt.Errorf("key %q: %d ops in the queue, %d in its record", k, len(ops), len(p.ops))
		}
		for i := range ops {
			if !proto.Equal(ops[i], p.ops[i]) {
				return fmt.Errorf("key %q: op %d differs: queue %v, record %v", k, i, ops[i], p.ops[i])
			}
		}
		if want := applyOps(p.base, p.ops); !equalValues(p.local, want) {
			return fmt.Errorf("key %q: reads show %v, base with ops is %v", k, p.local, want)
		}
	}
	return r.db.View(func(tx *bolt.Tx) error {
		var seqs []uint64
		err := tx.Bucket(bktPending).ForEach(func(k, v []byte) error {
			seq := binary.BigEndian.Uint64(k)
			b, err := decodeBatch(seq, v)
			if err != nil {
				return err
			}
			i := len(seqs)
			seqs = append(seqs, seq)
			if i >= len(r.queue) {
				return fmt.Errorf("file has batch seq %d beyond the %d in memory", seq, len(r.queue))
			}
			q := r.queue[i]
			if q.seq != seq || q.no != b.no || len(q.ops) != len(b.ops) {
				return fmt.Errorf("batch %d: memory seq %d no %d ops %d, file seq %d no %d ops %d", i, q.seq, q.no, len(q.ops), seq, b.no, len(b.ops))
			}
			for j := range b.ops {
				if !proto.Equal(q.ops[j], b.ops[j]) {
					return fmt.Errorf("batch seq %d op %d differs", seq, j)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(seqs) != len(r.queue) {
			return fmt.Errorf("file has %d batches, memory %d", len(seqs), len(r.queue))
		}
		for i := 1; i < len(r.queue); i++ {
			if r.queue[i].no <= r.queue[i-1].no {
				return fmt.Errorf("batch numbers not increasing: %d then %d", r.queue[i-1].no, r.queue[i].no)
			}
		}
		n := 0
		err = tx.Bucket(bktPkeys).ForEach(func(k, v []byte) error {
			n++
			p, err := decodePkey(v)
			if err != nil {
				return err
			}
			m := r.pend[string(k)]
			if m == nil {
				return fmt.Errorf("file has a pending-key record for %q, memory not", k)
			}
			if m.u != p.u || m.ul != p.ul || !equalValues(m.base, p.base) {
				return fmt.Errorf("key %q: memory u=%d ul=%d base=%v, file u=%d ul=%d base=%v", k, m.u, m.ul, m.base, p.u, p.ul, p.base)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n != len(r.pend) {
			return fmt.Errorf("file has %d pending-key records, memory %d", n, len(r.pend))
		}
		return nil
	})
}

// BucketPages reads the closed replica file at path and returns its page
// size and, for each bucket ("parts/o/kv"; "" for the root bucket), the
// pages of its tree, so tests can damage the pages of one bucket.
func BucketPages(path string) (int, map[string][]uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, nil, err
	}
	f, err := parseBoltFile(data)
	if err != nil {
		return 0, nil, err
	}
	pages := map[string][]uint64{}
	w := &walker{f: f, hwm: f.meta.pgid, seen: map[uint64]bool{}}
	w.onPage = func(path []string, id uint64) {
		k := strings.Join(path, "/")
		pages[k] = append(pages[k], id)
	}
	hdr := binary.NativeEndian.AppendUint64(nil, f.meta.root)
	hdr = binary.NativeEndian.AppendUint64(hdr, f.meta.rootSeq)
	w.bucket(nil, hdr, 0)
	if len(w.problems) > 0 {
		return 0, nil, fmt.Errorf("%s", summarise(w.problems))
	}
	return int(f.ps), pages, nil
}

// CheckReplicaFile runs the check Open runs on an existing file.
func CheckReplicaFile(path string) error {
	o, err := Options{}.withDefaults()
	if err != nil {
		return err
	}
	return checkReplicaFile(path, o)
}
