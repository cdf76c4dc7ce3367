package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/rules"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// CommitOptions are a backend commit's conditions.
type CommitOptions struct {
	// Expected, when set, makes the commit apply only when the partition
	// is at that version, else fail with ErrStale.
	Expected *uint64
	// IdempotencyKey, when not empty, names the commit: a commit to the
	// same partition under a key that already applied applies nothing and
	// returns the first one's version, until retention drops the key's
	// record. The same key with other ops or another Expected fails with
	// ErrKeyReused. See ValidateIdempotencyKey.
	IdempotencyKey string
}

// Commit applies ops to p atomically and durably for a trusted backend: both
// domains, no conflict check, under opts. It returns the new version.
func (e *Engine) Commit(ctx context.Context, p store.Partition, ops []*dalvv1.Op, opts CommitOptions) (uint64, error) {
	if err := value.ValidatePartitionName(p.Name); err != nil {
		return 0, err
	}
	if len(ops) == 0 {
		return 0, Errorf(ErrInvalid, "a commit needs at least one op")
	}
	if err := value.ValidateOps(ops, e.lim); err != nil {
		return 0, err
	}
	if err := value.ValidateIdempotencyKey(opts.IdempotencyKey); err != nil {
		return 0, err
	}
	var digest []byte
	if opts.IdempotencyKey != "" {
		var err error
		if digest, err = commitDigest(ops, opts.Expected); err != nil {
			return 0, err
		}
	}
	var (
		version uint64
		changes []*keyState
		applied bool
	)
	err := e.st.Update(ctx, p, func(r store.Reader) (*store.Commit, error) {
		applied = false
		// Idempotency first: a retry of a commit that applied is answered
		// as it was, even though its expected version is stale by now.
		if opts.IdempotencyKey != "" {
			rec, ok, err := r.IdempotencyKey(opts.IdempotencyKey)
			if err != nil {
				return nil, err
			}
			if ok {
				if !bytes.Equal(rec.Digest, digest) {
					return nil, Errorf(ErrKeyReused, "idempotencyKey %q already named the commit of version %d to %s, with other ops or another expectedVersion; use a new key for a new commit", opts.IdempotencyKey, rec.Version, p)
				}
				version = rec.Version
				return nil, nil
			}
		}
		head, err := r.Head()
		if err != nil {
			return nil, err
		}
		if opts.Expected != nil && *opts.Expected != head.Version {
			return nil, Errorf(ErrStale, "expectedVersion is %d but %s is at version %d", *opts.Expected, p, head.Version)
		}
		ks, err := loadKeys(r, head, ops)
		if err != nil {
			return nil, err
		}
		c, own, err := e.apply(ks, head.Version+1, ops, e.writeCheck(p, rules.Backend, nil))
		if err != nil {
			return nil, err
		}
		c.IdempotencyKey, c.KeyDigest = opts.IdempotencyKey, digest
		version, changes, applied = c.Version, own, true
		return c, nil
	})
	if err != nil {
		return 0, err
	}
	if applied {
		e.committed(CommitInfo{Partition: p, Version: version}, changes)
	}
	return version, nil
}

// commitDigest is what an idempotency key's record keeps of its commit: a
// SHA-256 of the ops and the expected version, so that a reused key is told
// apart from a retry without the ops' values being kept in the clear.
func commitDigest(ops []*dalvv1.Op, expected *uint64) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&dalvv1.CommitRequest{Ops: ops, ExpectedVersion: expected})
	if err != nil {
		return nil, fmt.Errorf("digest of the commit: %w", err)
	}
	sum := sha256.Sum256(b)
	return sum[:], nil
}

// DeletePartition erases every key of p in one commit that records the
// erase; devices that synced before get a reset. Versions go on, never
// reused. It returns the erase's version.
func (e *Engine) DeletePartition(ctx context.Context, p store.Partition) (uint64, error) {
	if err := value.ValidatePartitionName(p.Name); err != nil {
		return 0, err
	}
	rec, err := proto.Marshal(&dalvv1.ChangeEvent{Erased: true})
	if err != nil {
		return 0, err
	}
	var version uint64
	err = e.st.Update(ctx, p, func(r store.Reader) (*store.Commit, error) {
		head, err := r.Head()
		if err != nil {
			return nil, err
		}
		version = head.Version + 1
		return &store.Commit{Version: version, Time: e.now(), Erase: true, Ops: rec}, nil
	})
	if err != nil {
		return 0, err
	}
	e.committed(CommitInfo{Partition: p, Version: version, Erase: true}, nil)
	return version, nil
}

// Get returns p's version and the live keys among keys, in the order asked.
func (e *Engine) Get(ctx context.Context, p store.Partition, keys []string) (uint64, []*dalvv1.Change, error) {
	if err := value.ValidatePartitionName(p.Name); err != nil {
		return 0, nil, err
	}
	if len(keys) > e.lim.MaxOps {
		return 0, nil, Errorf(ErrLimit, "%d keys, over the limit of %d per request (--max-ops)", len(keys), e.lim.MaxOps)
	}
	for _, k := range keys {
		if err := value.ValidateKey(k, e.lim.MaxKeyBytes); err != nil {
			return 0, nil, err
		}
	}
	var version uint64
	var items []*dalvv1.Change
	err := e.st.View(ctx, p, func(r store.Reader) error {
		head, err := r.Head()
		if err != nil {
			return err
		}
		version = head.Version
		size := 0
		for _, k := range keys {
			ent, ok, err := r.Get(k)
			if err != nil {
				return err
			}
			if !ok || ent.Deleted {
				continue
			}
			c, err := toChange(ent)
			if err != nil {
				return err
			}
			if size += value.ChangeSize(c.Key, c.Value); size > e.lim.MaxResponseBytes {
				return Errorf(ErrLimit, "the values asked for pass the response limit of %d bytes (--max-response-bytes); ask for fewer keys", e.lim.MaxResponseBytes)
			}
			items = append(items, c)
		}
		return nil
	})
	return version, items, err
}

// Default and largest List page sizes.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// List returns a page of p's live keys under prefix in key order, after the
// page token of a previous page, and the token of the next page ("" when
// this is the last). A page is also cut at the response limit.
func (e *Engine) List(ctx context.Context, p store.Partition, prefix string, pageSize int, pageToken string) (uint64, []*dalvv1.Change, string, error) {
	if err := value.ValidatePartitionName(p.Name); err != nil {
		return 0, nil, "", err
	}
	if len(prefix) > e.lim.MaxKeyBytes {
		return 0, nil, "", Errorf(ErrInvalid, "prefix is %d bytes, over the key limit of %d", len(prefix), e.lim.MaxKeyBytes)
	}
	switch {
	case pageSize < 0:
		return 0, nil, "", Errorf(ErrInvalid, "pageSize %d is negative", pageSize)
	case pageSize == 0:
		pageSize = DefaultPageSize
	case pageSize > MaxPageSize:
		pageSize = MaxPageSize
	}
	after, err := decodePageToken(pageToken)
	if err != nil {
		return 0, nil, "", err
	}
	var (
		version uint64
		items   []*dalvv1.Change
		next    string
	)
	err = e.st.View(ctx, p, func(r store.Reader) error {
		head, err := r.Head()
		if err != nil {
			return err
		}
		version = head.Version
		size := 0
		return r.Scan(prefix, after, func(ent store.Entry) (bool, error) {
			c, err := toChange(ent)
			if err != nil {
				return false, err
			}
			n := value.ChangeSize(c.Key, c.Value)
			if len(items) == pageSize || (len(items) > 0 && size+n > e.lim.MaxResponseBytes) {
				next = encodePageToken(items[len(items)-1].Key)
				return false, nil
			}
			size += n
			items = append(items, c)
			return true, nil
		})
	})
	return version, items, next, err
}

// Export reads every live key of p at one version, in key order, and hands
// it to page in the pages List makes (at most MaxPageSize keys, and within
// the response limit): memory stays bounded whatever the partition's size,
// and no store view is held while page runs. Each page is read in its own
// view; every page after the first must find the partition at the first
// one's version, else Export fails with ErrChanged. Versions are dense and
// every commit (an erase too) moves them, so pages all read at one version
// are one consistent state of the partition. page gets that version with
// every page, the first one even when the partition is empty.
func (e *Engine) Export(ctx context.Context, p store.Partition, page func(version uint64, items []*dalvv1.Change) error) error {
	var (
		pinned uint64
		token  string
	)
	for first := true; ; first = false {
		version, items, next, err := e.List(ctx, p, "", MaxPageSize, token)
		if err != nil {
			return err
		}
		if first {
			pinned = version
		} else if version != pinned {
			return Errorf(ErrChanged, "%s changed while it was exported (from version %d to %d); export it again", p, pinned, version)
		}
		if err := page(version, items); err != nil {
			return err
		}
		if next == "" {
			return nil
		}
		token = next
	}
}

// Compact drops tombstones and feed records older than retention.
func (e *Engine) Compact(ctx context.Context, retention time.Duration) (store.CompactStats, error) {
	return e.st.Compact(ctx, e.now().Add(-retention))
}

// ChangesOf returns entries as the changes a watch sends, one per entry, in
// their order; an entry whose value does not decode is corruption.
func ChangesOf(entries []store.Entry) ([]*dalvv1.Change, error) {
	out := make([]*dalvv1.Change, len(entries))
	for i, ent := range entries {
		c, err := toChange(ent)
		if err != nil {
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}

func toChange(ent store.Entry) (*dalvv1.Change, error) {
	c := &dalvv1.Change{Key: ent.Key, Deleted: ent.Deleted, Version: ent.Version}
	if !ent.Deleted {
		v, err := value.Decode(ent.Value)
		if err != nil {
			return nil, fmt.Errorf("%w: key %q: %v", store.ErrCorruption, ent.Key, err)
		}
		c.Value = v
	}
	return c, nil
}

// encodePageToken is the page token of the page after key: "k:" and the
// key, in unpadded URL-safe base64.
func encodePageToken(key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("k:" + key))
}

// decodePageToken returns the key a page token from [encodePageToken]
// continues after; "" for no token. Any other token is ErrInvalid.
func decodePageToken(token string) (string, error) {
	if token == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || !strings.HasPrefix(string(b), "k:") {
		return "", Errorf(ErrInvalid, "pageToken %q is not one this server gave; pass nextPageToken from the previous answer", token)
	}
	return string(b[2:]), nil
}
