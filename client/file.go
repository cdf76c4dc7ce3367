package client

// The replica file: one bbolt database. Its layout:
//
//	meta/      device, user, config (a GetConfigResponse), format
//	parts/     one bucket per partition: "o" the user's own, "s/NAME" each
//	           shared one; in each, "version" and the bucket kv of
//	           key -> uvarint(version of the last change) + value.Encode
//	pending/   8-byte sequence -> a batch: its number, its parts when merged,
//	           its ops (a SyncRequest); the batches not yet acknowledged,
//	           in order. The bucket's sequence keys and numbers batches.
//	pkeys/     key -> what the device knew of a key with pending ops: the
//	           base value and the versions that bound unseen remote changes
//	inbox/     key -> a deferred conflict
//	refused/   8-byte sequence -> a batch the server refused, set aside
//
// Every write is one bbolt transaction, fsynced before it returns, so a
// crash leaves each one wholly applied or wholly absent.

import (
	"encoding/binary"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/value"
)

var (
	bktMeta    = []byte("meta")
	bktParts   = []byte("parts")
	bktPending = []byte("pending")
	bktPkeys   = []byte("pkeys")
	bktInbox   = []byte("inbox")
	bktRefused = []byte("refused")
	bktKV      = []byte("kv")

	keyDevice  = []byte("device")
	keyUser    = []byte("user")
	keyConfig  = []byte("config")
	keyFormat  = []byte("format")
	keyVersion = []byte("version")
)

// fileFormat is written once; a file of another format is refused.
const fileFormat = "dalv-replica-1"

// partBucket is the bucket name of a partition: "" is the user's own.
func partBucket(part string) []byte {
	if part == "" {
		return []byte("o")
	}
	return []byte("s/" + part)
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// reader decodes the records below; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = corruptf("bad varint")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = corruptf("length %d past the end of a record", n)
		return nil
	}
	out := append([]byte(nil), r.b[:n]...)
	r.b = r.b[n:]
	return out
}

// optValue reads what appendOptValue wrote: nil for absent.
func (r *reader) optValue() *dalvv1.Value {
	if r.err != nil {
		return nil
	}
	if len(r.b) == 0 {
		r.err = corruptf("truncated value")
		return nil
	}
	present := r.b[0]
	r.b = r.b[1:]
	if present == 0 {
		return nil
	}
	enc := r.bytes()
	if r.err != nil {
		return nil
	}
	v, err := value.Decode(enc)
	if err != nil {
		r.err = corruptf("%v", err)
	}
	return v
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

func appendOptValue(dst []byte, v *dalvv1.Value) []byte {
	if v == nil {
		return append(dst, 0)
	}
	dst = append(dst, 1)
	return appendBytes(dst, value.Encode(nil, v))
}

// encodeEntry is a synced key's record in a partition's kv bucket.
func encodeEntry(version uint64, v *dalvv1.Value) []byte {
	b := binary.AppendUvarint(make([]byte, 0, 16+value.Size(v)), version)
	return value.Encode(b, v)
}

func decodeEntry(b []byte) (uint64, *dalvv1.Value, error) {
	ver, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, nil, corruptf("bad entry version")
	}
	v, err := value.Decode(b[n:])
	if err != nil {
		return 0, nil, corruptf("%v", err)
	}
	return ver, v, nil
}

// pkey is what the device knows of a key with pending ops.
//
// base is the value the key held when the device last synced it: the
// resolver's base, and what the pending ops apply to for the local view.
// u is 0 while the device has seen every remote change to the key (it is
// clean); otherwise it is the lowest version that may hold a remote change
// the device has not shown to the application, and a sync must send a base
// version below it so that the server flags the key. ul is the same bound
// for scalar changes (PUT or DELETE) only, which is all list ops conflict
// with; 0 means u.
type pkey struct {
	base  *dalvv1.Value
	u, ul uint64
	ops   []*dalvv1.Op  // pending ops on the key, in order, across batches
	local *dalvv1.Value // base with ops applied: what reads show
}

func (p *pkey) dirty() bool { return p.u != 0 }

func encodePkey(p *pkey) []byte {
	b := binary.AppendUvarint(nil, p.u)
	b = binary.AppendUvarint(b, p.ul)
	return appendOptValue(b, p.base)
}

func decodePkey(b []byte) (*pkey, error) {
	r := &reader{b: b}
	p := &pkey{u: r.uvarint(), ul: r.uvarint()}
	p.base = r.optValue()
	return p, r.err
}

// batch is one pending batch: a local transaction, or several merged into
// one request. A merged batch remembers its parts, so that when the server
// refuses it they go up again one by one and only the refused one is set
// aside.
type batch struct {
	seq   uint64 // its key in the pending bucket: the order
	no    uint64 // the batch number sent to the server
	ops   []*dalvv1.Op
	parts []part // nil for a batch that was never merged
}

// part is one of the transactions a merged batch holds: its own sequence
// (free while merged) and how many of the ops are its.
type part struct {
	seq uint64
	n   int
}

// split returns b's parts as batches, keeping b's number for none of them.
func (b *batch) split() []*batch {
	if len(b.parts) < 2 {
		return []*batch{b}
	}
	out := make([]*batch, 0, len(b.parts))
	ops := b.ops
	for _, p := range b.parts {
		out = append(out, &batch{seq: p.seq, ops: ops[:p.n:p.n]})
		ops = ops[p.n:]
	}
	return out
}

// partsOf returns b's parts, a never-merged batch being one part.
func (b *batch) partsOf() []part {
	if len(b.parts) > 0 {
		return b.parts
	}
	return []part{{seq: b.seq, n: len(b.ops)}}
}

func encodeBatch(b *batch) ([]byte, error) {
	ops, err := proto.Marshal(&dalvv1.SyncRequest{Ops: b.ops})
	if err != nil {
		return nil, err
	}
	enc := binary.AppendUvarint(nil, b.no)
	enc = binary.AppendUvarint(enc, uint64(len(b.parts)))
	for _, p := range b.parts {
		enc = binary.AppendUvarint(enc, p.seq)
		enc = binary.AppendUvarint(enc, uint64(p.n))
	}
	return appendBytes(enc, ops), nil
}

func decodeBatch(seq uint64, enc []byte) (*batch, error) {
	r := &reader{b: enc}
	b := &batch{seq: seq, no: r.uvarint()}
	n := r.uvarint()
	if n > uint64(len(enc)) {
		return nil, corruptf("pending batch %d: %d parts", seq, n)
	}
	total := 0
	for range n {
		seq2, ops := r.uvarint(), r.uvarint()
		// A part is a transaction: at least one op, and no more than the
		// record has bytes (which also keeps the sum from wrapping).
		if r.err == nil && (ops == 0 || ops > uint64(len(enc))) {
			return nil, corruptf("pending batch %d: a part of %d ops", seq, ops)
		}
		total += int(ops)
		b.parts = append(b.parts, part{seq: seq2, n: int(ops)})
	}
	ops := r.bytes()
	if r.err != nil {
		return nil, fmt.Errorf("pending batch %d: %w", seq, r.err)
	}
	var m dalvv1.SyncRequest
	if err := proto.Unmarshal(ops, &m); err != nil {
		return nil, corruptf("pending batch %d: %v", seq, err)
	}
	b.ops = m.GetOps()
	if n > 0 && total != len(b.ops) {
		return nil, corruptf("pending batch %d: parts hold %d ops, the batch %d", seq, total, len(b.ops))
	}
	return b, nil
}

// Conflict is one key on which the device's pending ops met a remote change
// it had not seen. Each value is nil when the key is absent on that side.
type Conflict struct {
	// Key is the conflicting key.
	Key string
	// Field is the JSON field path ("a.b") when [MergeJSON] hands a field
	// to its fallback; empty for a whole key.
	Field string
	// Base is what the key held when the device last synced it.
	Base *Value
	// Local is what the device holds: Base with its pending ops.
	Local *Value
	// Remote is what the server holds now.
	Remote *Value
	// Version is the partition version Remote was read at.
	Version uint64
	// At is when the conflict was deferred (inbox entries only).
	At time.Time
	// Note says why a conflict was deferred when the resolver did not
	// choose to (for example, its value broke a limit).
	Note string
	// Fields are what conflicts, in path order (inbox entries only): the
	// JSON fields changed on both sides to different values when the key
	// holds JSON objects, or one entry with an empty Path when the key
	// cannot be merged field by field. Settle them with
	// [Replica.SettleFields].
	Fields []FieldConflict
	// Merged is the value with every field nobody conflicted on merged
	// from both sides, and each of Fields at its Remote value (inbox
	// entries only).
	Merged *Value
}

func encodeConflict(c *Conflict) []byte {
	b := binary.AppendUvarint(nil, c.Version)
	b = binary.AppendVarint(b, c.At.UnixNano())
	b = appendOptValue(b, c.Base)
	b = appendOptValue(b, c.Local)
	b = appendOptValue(b, c.Remote)
	return appendBytes(b, []byte(c.Note))
}

func decodeConflict(key string, b []byte) (*Conflict, error) {
	r := &reader{b: b}
	c := &Conflict{Key: key, Version: r.uvarint()}
	if r.err == nil {
		nanos, n := binary.Varint(r.b)
		if n <= 0 {
			return nil, corruptf("inbox %q: bad time", key)
		}
		r.b = r.b[n:]
		c.At = time.Unix(0, nanos)
	}
	c.Base = r.optValue()
	c.Local = r.optValue()
	c.Remote = r.optValue()
	c.Note = string(r.bytes())
	if r.err != nil {
		return nil, fmt.Errorf("inbox %q: %w", key, r.err)
	}
	return c, nil
}

// RefusedBatch is a batch the server refused for a reason other than a
// conflict (permission, a limit, a bad value). It was set aside: its ops no
// longer show in reads, and the batches after it went on.
type RefusedBatch struct {
	// ID identifies it for [Replica.DropRefused].
	ID uint64
	// Ops are the batch's ops.
	Ops []*Op
	// Code is the server's Connect code, as in "permission_denied".
	Code string
	// Message is the server's explanation.
	Message string
	// At is when it was set aside.
	At time.Time
}

// Error describes the refusal, so a RefusedBatch can be reported as an
// error (as [Status].LastError does).
func (b RefusedBatch) Error() string {
	return fmt.Sprintf("batch of %d ops refused by the server (%s): %s", len(b.Ops), b.Code, b.Message)
}

func encodeRefused(rb *RefusedBatch) ([]byte, error) {
	ops, err := proto.Marshal(&dalvv1.SyncRequest{Ops: rb.Ops})
	if err != nil {
		return nil, err
	}
	b := appendBytes(nil, ops)
	b = appendBytes(b, []byte(rb.Code))
	b = appendBytes(b, []byte(rb.Message))
	return binary.AppendVarint(b, rb.At.UnixNano()), nil
}

func decodeRefused(id uint64, b []byte) (*RefusedBatch, error) {
	r := &reader{b: b}
	ops := r.bytes()
	code := r.bytes()
	msg := r.bytes()
	if r.err != nil {
		return nil, fmt.Errorf("refused batch %d: %w", id, r.err)
	}
	nanos, n := binary.Varint(r.b)
	if n <= 0 {
		return nil, corruptf("refused batch %d: bad time", id)
	}
	var m dalvv1.SyncRequest
	if err := proto.Unmarshal(ops, &m); err != nil {
		return nil, corruptf("refused batch %d: %v", id, err)
	}
	return &RefusedBatch{ID: id, Ops: m.GetOps(), Code: string(code), Message: string(msg), At: time.Unix(0, nanos)}, nil
}
