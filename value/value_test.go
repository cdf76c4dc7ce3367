package value

import (
	"bytes"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

func op(kind dalvv1.OpKind, key string, v *dalvv1.Value) *dalvv1.Op {
	return &dalvv1.Op{Kind: kind, Key: key, Value: v}
}

func TestApply(t *testing.T) {
	const (
		put = dalvv1.OpKind_OP_KIND_PUT
		del = dalvv1.OpKind_OP_KIND_DELETE
		add = dalvv1.OpKind_OP_KIND_LIST_ADD
		rm  = dalvv1.OpKind_OP_KIND_LIST_REMOVE
	)
	a, b, c := []byte("a"), []byte("b"), []byte("c")
	tests := []struct {
		name        string
		cur         *dalvv1.Value
		op          *dalvv1.Op
		want        *dalvv1.Value
		wantChanged bool
		wantErr     error
	}{
		{"put on absent", nil, op(put, "k", Scalar(a)), Scalar(a), true, nil},
		{"put replaces list", List(a), op(put, "k", Scalar(b)), Scalar(b), true, nil},
		{"put same value still changes", Scalar(a), op(put, "k", Scalar(a)), Scalar(a), true, nil},
		{"delete", Scalar(a), op(del, "k", nil), nil, true, nil},
		{"delete absent still changes", nil, op(del, "k", nil), nil, true, nil},
		{"list add to absent", nil, op(add, "k", Scalar(a)), List(a), true, nil},
		{"list add appends", List(a, b), op(add, "k", Scalar(c)), List(a, b, c), true, nil},
		{"list add present is no change", List(a, b), op(add, "k", Scalar(a)), List(a, b), false, nil},
		{"list remove middle keeps order", List(a, b, c), op(rm, "k", Scalar(b)), List(a, c), true, nil},
		{"list remove absent element", List(a), op(rm, "k", Scalar(b)), List(a), false, nil},
		{"list remove on absent key", nil, op(rm, "k", Scalar(b)), nil, false, nil},
		{"list add on scalar", Scalar(a), op(add, "k", Scalar(b)), Scalar(a), false, ErrNotList},
		{"list remove on scalar", Scalar(a), op(rm, "k", Scalar(b)), Scalar(a), false, ErrNotList},
		{"unknown kind", nil, op(dalvv1.OpKind(99), "k", nil), nil, false, ErrBadOp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := proto.Clone(tt.cur)
			got, changed, err := Apply(tt.cur, tt.op)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Apply() error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if !proto.Equal(got, tt.want) {
				t.Errorf("Apply() = %v, want %v", got, tt.want)
			}
			if changed != tt.wantChanged {
				t.Errorf("Apply() changed = %v, want %v", changed, tt.wantChanged)
			}
			if tt.cur != nil && !proto.Equal(tt.cur, before) {
				t.Errorf("Apply() modified its input: %v, was %v", tt.cur, before)
			}
		})
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	for _, v := range []*dalvv1.Value{
		Scalar(nil), Scalar([]byte("hello")), Scalar(bytes.Repeat([]byte{0xff}, 1000)),
		List(), List([]byte{}), List([]byte("a"), []byte(""), bytes.Repeat([]byte("x"), 300)),
	} {
		got, err := Decode(Encode(nil, v))
		if err != nil {
			t.Fatalf("Decode(Encode(%v)): %v", v, err)
		}
		if !proto.Equal(got, v) {
			t.Errorf("Decode(Encode(%v)) = %v", v, got)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, b := range [][]byte{nil, {}, {9}, {tagList, 5, 'a'}, {tagList, 0xff}} {
		if _, err := Decode(b); !errors.Is(err, ErrEncoding) {
			t.Errorf("Decode(%v) error = %v, want ErrEncoding", b, err)
		}
	}
}

func TestJSON(t *testing.T) {
	type prefs struct {
		Theme string `json:"theme"`
	}
	v, err := JSON(prefs{Theme: "dark"})
	if err != nil {
		t.Fatal(err)
	}
	var got prefs
	if err := UnmarshalJSON(v, &got); err != nil {
		t.Fatal(err)
	}
	if got.Theme != "dark" {
		t.Errorf("theme = %q, want dark", got.Theme)
	}
	if err := UnmarshalJSON(List(), &got); err == nil {
		t.Error("UnmarshalJSON(list) succeeded, want an error")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Encode(nil, Scalar([]byte("x"))))
	f.Add(Encode(nil, List([]byte("a"), []byte("bc"))))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := Decode(b)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same bytes.
		if got := Encode(nil, v); !bytes.Equal(got, b) {
			t.Fatalf("Encode(Decode(%x)) = %x", b, got)
		}
	})
}
