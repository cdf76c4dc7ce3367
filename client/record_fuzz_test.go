package client

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// FuzzDecodeRecords feeds arbitrary bytes to the decoder of each kind of
// record the replica file holds (a synced entry, a pending key, a pending
// batch, a deferred conflict, a refused batch): none panics, each refuses
// with an error wrapping ErrCorrupt only, and what one accepts can be used
// (a batch split into its parts) and encodes to a record that decodes to
// the same. FuzzOpenReplicaFile fuzzes whole files; this reaches the
// records' decoders directly. The seeds in testdata/fuzz/FuzzDecodeRecords
// are records the encoders made.
func FuzzDecodeRecords(f *testing.F) {
	for kind, rec := range seedRecords(f) {
		f.Add(uint8(kind), rec)
	}
	f.Fuzz(func(t *testing.T, kind uint8, b []byte) {
		var (
			err   error
			again func() error
		)
		switch kind % 5 {
		case 0:
			var ver uint64
			var v *dalvv1.Value
			if ver, v, err = decodeEntry(b); err == nil {
				again = func() error {
					ver2, v2, err := decodeEntry(encodeEntry(ver, v))
					if err == nil && (ver2 != ver || !proto.Equal(v2, v)) {
						err = errors.New("entry changed")
					}
					return err
				}
			}
		case 1:
			var p *pkey
			if p, err = decodePkey(b); err == nil {
				again = func() error {
					p2, err := decodePkey(encodePkey(p))
					if err == nil && (p2.u != p.u || p2.ul != p.ul || !proto.Equal(p2.base, p.base)) {
						err = errors.New("pending key changed")
					}
					return err
				}
			}
		case 2:
			var bt *batch
			if bt, err = decodeBatch(7, b); err == nil {
				again = func() error {
					n := 0
					for _, p := range bt.split() {
						n += len(p.ops)
					}
					if n != len(bt.ops) {
						return errors.New("the parts do not hold the batch's ops")
					}
					enc, err := encodeBatch(bt)
					if err != nil {
						return err
					}
					bt2, err := decodeBatch(7, enc)
					if err == nil && (bt2.no != bt.no || len(bt2.parts) != len(bt.parts) || len(bt2.ops) != len(bt.ops)) {
						err = errors.New("batch changed")
					}
					return err
				}
			}
		case 3:
			var c *Conflict
			if c, err = decodeConflict("k", b); err == nil {
				again = func() error {
					c2, err := decodeConflict("k", encodeConflict(c))
					if err == nil && (c2.Version != c.Version || !c2.At.Equal(c.At) || c2.Note != c.Note || !proto.Equal(c2.Remote, c.Remote)) {
						err = errors.New("conflict changed")
					}
					return err
				}
			}
		case 4:
			var rb *RefusedBatch
			if rb, err = decodeRefused(3, b); err == nil {
				again = func() error {
					enc, err := encodeRefused(rb)
					if err != nil {
						return err
					}
					rb2, err := decodeRefused(3, enc)
					if err == nil && (rb2.Code != rb.Code || rb2.Message != rb.Message || len(rb2.Ops) != len(rb.Ops)) {
						err = errors.New("refused batch changed")
					}
					return err
				}
			}
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("record kind %d %x: error %v does not wrap ErrCorrupt", kind%5, b, err)
			}
			return
		}
		if err := again(); err != nil {
			t.Fatalf("record kind %d %x decoded, but: %v", kind%5, b, err)
		}
	})
}

// seedRecords returns one record of each kind, in FuzzDecodeRecords' order.
func seedRecords(tb testing.TB) [5][]byte {
	tb.Helper()
	v := &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: []byte(`"dark"`)}}
	l := &dalvv1.Value{Kind: &dalvv1.Value_List{List: &dalvv1.ListValue{Items: [][]byte{[]byte("a"), []byte("b")}}}}
	ops := []*dalvv1.Op{
		{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: "prefs/theme", Value: v},
		{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: "cart", Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: []byte("milk")}}},
	}
	batch, err := encodeBatch(&batch{no: 4, ops: ops, parts: []part{{seq: 1, n: 1}, {seq: 2, n: 1}}})
	if err != nil {
		tb.Fatal(err)
	}
	refused, err := encodeRefused(&RefusedBatch{Ops: ops, Code: "invalid_argument", Message: "no", At: time.Unix(1700000000, 0)})
	if err != nil {
		tb.Fatal(err)
	}
	return [5][]byte{
		encodeEntry(9, l),
		encodePkey(&pkey{base: v, u: 3, ul: 2}),
		batch,
		encodeConflict(&Conflict{Key: "k", Version: 5, At: time.Unix(1700000000, 0), Base: v, Local: l, Remote: nil, Note: "fields"}),
		refused,
	}
}

// TestDecodeBatchNegativePartCount: a damaged pending batch whose part
// counts wrap around to a negative one but still sum to its ops was
// accepted, and splitting it (when the server refuses the merged batch)
// panicked. It is refused as corrupt.
func TestDecodeBatchNegativePartCount(t *testing.T) {
	ops, err := proto.Marshal(&dalvv1.SyncRequest{Ops: []*dalvv1.Op{{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: "a"}}})
	if err != nil {
		t.Fatal(err)
	}
	enc := binary.AppendUvarint(nil, 1) // batch number
	enc = binary.AppendUvarint(enc, 2)  // parts
	enc = binary.AppendUvarint(binary.AppendUvarint(enc, 1), math.MaxUint64)
	enc = binary.AppendUvarint(binary.AppendUvarint(enc, 2), 2)
	enc = appendBytes(enc, ops)
	if b, err := decodeBatch(7, enc); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("decodeBatch of parts -1 and 2 = %+v, %v; want ErrCorrupt", b, err)
	}
}
