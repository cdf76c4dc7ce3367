// Package value holds what an op does to a value, written once and used by the
// server and the client SDK alike: scalars are opaque bytes; lists are ordered
// sets of byte strings in order of first addition, so LIST_ADD of a present
// element and LIST_REMOVE of an absent one change nothing. It also holds the
// compact binary encoding stores keep values in, JSON helpers, and the rules
// a device must know of the server's: the limits and their defaults, the
// key, op, device-id and partition-name checks with their errors (ErrInvalid,
// ErrLimit), and the size a change counts in an answer.
package value

import (
	"bytes"
	"encoding/binary"
	"fmt"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// Scalar returns a scalar value holding b.
func Scalar(b []byte) *dalvv1.Value {
	return &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: b}}
}

// List returns a list value holding items, in order.
func List(items ...[]byte) *dalvv1.Value {
	return &dalvv1.Value{Kind: &dalvv1.Value_List{List: &dalvv1.ListValue{Items: items}}}
}

// IsList reports whether v is a list. A nil value is not.
func IsList(v *dalvv1.Value) bool {
	_, ok := v.GetKind().(*dalvv1.Value_List)
	return ok
}

// Apply returns what a key holding cur (nil when absent) holds after op: next
// is nil when the key is then absent, and changed is false when op changes
// nothing (LIST_ADD of a present element, LIST_REMOVE of an absent one or on
// an absent key). PUT and DELETE always count as changes. Apply never
// modifies cur. A list op on a key that holds a scalar is ErrNotList. Apply
// does not validate op: the engine does that first.
func Apply(cur *dalvv1.Value, op *dalvv1.Op) (next *dalvv1.Value, changed bool, err error) {
	switch op.GetKind() {
	case dalvv1.OpKind_OP_KIND_PUT:
		return op.GetValue(), true, nil
	case dalvv1.OpKind_OP_KIND_DELETE:
		return nil, true, nil
	case dalvv1.OpKind_OP_KIND_LIST_ADD, dalvv1.OpKind_OP_KIND_LIST_REMOVE:
		if cur != nil && !IsList(cur) {
			return cur, false, fmt.Errorf("%w: %s on key %q, which holds a scalar", ErrNotList, opName(op.GetKind()), op.GetKey())
		}
		items := cur.GetList().GetItems()
		elem := op.GetValue().GetScalar()
		at := index(items, elem)
		if op.GetKind() == dalvv1.OpKind_OP_KIND_LIST_ADD {
			if at >= 0 {
				return cur, false, nil
			}
			next := make([][]byte, len(items), len(items)+1)
			copy(next, items)
			return List(append(next, elem)...), true, nil
		}
		if at < 0 {
			return cur, false, nil
		}
		next := make([][]byte, 0, len(items)-1)
		next = append(next, items[:at]...)
		return List(append(next, items[at+1:]...)...), true, nil
	}
	return cur, false, fmt.Errorf("%w: %v", ErrBadOp, op.GetKind())
}

func index(items [][]byte, elem []byte) int {
	for i, it := range items {
		if bytes.Equal(it, elem) {
			return i
		}
	}
	return -1
}

// IsListOp reports whether k is LIST_ADD or LIST_REMOVE.
func IsListOp(k dalvv1.OpKind) bool {
	return k == dalvv1.OpKind_OP_KIND_LIST_ADD || k == dalvv1.OpKind_OP_KIND_LIST_REMOVE
}

func opName(k dalvv1.OpKind) string {
	switch k {
	case dalvv1.OpKind_OP_KIND_PUT:
		return "PUT"
	case dalvv1.OpKind_OP_KIND_DELETE:
		return "DELETE"
	case dalvv1.OpKind_OP_KIND_LIST_ADD:
		return "LIST_ADD"
	case dalvv1.OpKind_OP_KIND_LIST_REMOVE:
		return "LIST_REMOVE"
	}
	return k.String()
}

// Size is the number of payload bytes v holds: a scalar's length, or the sum
// of a list's item lengths. The value limit is checked against it.
func Size(v *dalvv1.Value) int {
	switch k := v.GetKind().(type) {
	case *dalvv1.Value_Scalar:
		return len(k.Scalar)
	case *dalvv1.Value_List:
		n := 0
		for _, it := range k.List.GetItems() {
			n += len(it)
		}
		return n
	}
	return 0
}

// Encoding tags: the first byte of an encoded value.
const (
	tagScalar = 1
	tagList   = 2
)

// Encode appends the compact binary form of v to dst. v must be set.
func Encode(dst []byte, v *dalvv1.Value) []byte {
	switch k := v.GetKind().(type) {
	case *dalvv1.Value_List:
		dst = append(dst, tagList)
		for _, it := range k.List.GetItems() {
			dst = binary.AppendUvarint(dst, uint64(len(it)))
			dst = append(dst, it...)
		}
		return dst
	default:
		dst = append(dst, tagScalar)
		return append(dst, v.GetScalar()...)
	}
}

// Decode parses what Encode produced. The result shares no memory with b.
func Decode(b []byte) (*dalvv1.Value, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrEncoding)
	}
	switch b[0] {
	case tagScalar:
		return Scalar(bytes.Clone(b[1:])), nil
	case tagList:
		rest := b[1:]
		var items [][]byte
		for len(rest) > 0 {
			n, w := binary.Uvarint(rest)
			if w <= 0 || n > uint64(len(rest)-w) {
				return nil, fmt.Errorf("%w: list item length", ErrEncoding)
			}
			rest = rest[w:]
			items = append(items, bytes.Clone(rest[:n]))
			rest = rest[n:]
		}
		return List(items...), nil
	}
	return nil, fmt.Errorf("%w: unknown tag %d", ErrEncoding, b[0])
}
