package value

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

func TestValidateKey(t *testing.T) {
	tests := []struct {
		key  string
		want error
	}{
		{"prefs/theme", nil},
		{"ünïcødé/🔑", nil},
		{strings.Repeat("k", 1024), nil},
		{"", ErrInvalid},
		{strings.Repeat("k", 1025), ErrLimit},
		{"bad\x00nul", ErrInvalid},
		{"tab\there", ErrInvalid},
		{"del\x7f", ErrInvalid},
		{"c1\u0085", ErrInvalid},
		{"\xff\xfe", ErrInvalid},
	}
	for _, tt := range tests {
		if err := ValidateKey(tt.key, DefaultMaxKeyBytes); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
			t.Errorf("ValidateKey(%.20q) = %v, want %v", tt.key, err, tt.want)
		}
	}
}

func TestValidateOps(t *testing.T) {
	l := Limits{MaxValueBytes: 8, MaxOps: 2}.WithDefaults()
	put := func(v *dalvv1.Value) *dalvv1.Op {
		return &dalvv1.Op{Kind: dalvv1.OpKind_OP_KIND_PUT, Key: "k", Value: v}
	}
	tests := []struct {
		name string
		ops  []*dalvv1.Op
		want error
	}{
		{"put scalar", []*dalvv1.Op{put(Scalar([]byte("v")))}, nil},
		{"put list", []*dalvv1.Op{put(List([]byte("a"), []byte("b")))}, nil},
		{"no ops", nil, nil},
		{"nil op", []*dalvv1.Op{nil}, ErrInvalid},
		{"too many ops", []*dalvv1.Op{put(Scalar(nil)), put(Scalar(nil)), put(Scalar(nil))}, ErrLimit},
		{"put without value", []*dalvv1.Op{put(nil)}, ErrInvalid},
		{"put empty Value message", []*dalvv1.Op{put(&dalvv1.Value{})}, ErrInvalid},
		{"put value too large", []*dalvv1.Op{put(Scalar([]byte("123456789")))}, ErrLimit},
		{"put list too large", []*dalvv1.Op{put(List([]byte("12345"), []byte("6789")))}, ErrLimit},
		{"put list duplicates", []*dalvv1.Op{put(List([]byte("a"), []byte("a")))}, ErrInvalid},
		{"delete with value", []*dalvv1.Op{{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: "k", Value: Scalar(nil)}}, ErrInvalid},
		{"delete", []*dalvv1.Op{{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: "k"}}, nil},
		{"list add without element", []*dalvv1.Op{{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: "k"}}, ErrInvalid},
		{"list add with list", []*dalvv1.Op{{Kind: dalvv1.OpKind_OP_KIND_LIST_ADD, Key: "k", Value: List()}}, ErrInvalid},
		{"list remove element too large", []*dalvv1.Op{{Kind: dalvv1.OpKind_OP_KIND_LIST_REMOVE, Key: "k", Value: Scalar([]byte("123456789"))}}, ErrLimit},
		{"unspecified kind", []*dalvv1.Op{{Key: "k"}}, ErrInvalid},
		{"unknown kind", []*dalvv1.Op{{Kind: 42, Key: "k"}}, ErrInvalid},
		{"bad key", []*dalvv1.Op{{Kind: dalvv1.OpKind_OP_KIND_DELETE, Key: ""}}, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateOps(tt.ops, l)
			if (err == nil) != (tt.want == nil) || !errors.Is(err, tt.want) {
				t.Fatalf("ValidateOps() = %v, want %v", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "invalid argument") {
				t.Errorf("message %q repeats the error kind", err)
			}
		})
	}
}

// FuzzValidateOps feeds arbitrary ops to the validator: it never panics,
// and whatever it accepts applies without error to an absent key and keeps
// the promises of the limits.
func FuzzValidateOps(f *testing.F) {
	f.Add(int32(1), "prefs/theme", []byte("dark"), false, []byte(nil))
	f.Add(int32(3), "cart/items", []byte("sku-1"), false, []byte(nil))
	f.Add(int32(1), "l", []byte("a"), true, []byte("a"))
	f.Add(int32(2), "k\x00", []byte(nil), false, []byte(nil))
	f.Add(int32(7), "\xff", []byte("x"), true, []byte("y"))
	f.Fuzz(func(t *testing.T, kind int32, key string, v []byte, list bool, item []byte) {
		l := Limits{MaxKeyBytes: 64, MaxValueBytes: 64}.WithDefaults()
		op := &dalvv1.Op{Kind: dalvv1.OpKind(kind), Key: key}
		switch {
		case list:
			op.Value = List(v, item)
		case v != nil:
			op.Value = Scalar(v)
		}
		err := ValidateOps([]*dalvv1.Op{op}, l)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrLimit) {
				t.Fatalf("ValidateOps error %v is neither ErrInvalid nor ErrLimit", err)
			}
			return
		}
		if key == "" || len(key) > l.MaxKeyBytes || !utf8.ValidString(key) {
			t.Fatalf("accepted bad key %q", key)
		}
		for _, r := range key {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("accepted key %q with a control character", key)
			}
		}
		if Size(op.GetValue()) > l.MaxValueBytes {
			t.Fatalf("accepted a value of %d bytes", Size(op.GetValue()))
		}
		if _, _, err := Apply(nil, op); err != nil {
			t.Fatalf("accepted op fails to apply: %v", err)
		}
	})
}

func TestValidateDeviceID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"phone", true},
		{"7f9c2ba4-e88f-4c2d-9a3b-1c5e8d2f6a01", true},
		{"Zoé's phone 📱", true},
		{strings.Repeat("d", MaxDeviceIDBytes), true},
		{"", false},
		{strings.Repeat("d", MaxDeviceIDBytes+1), false},
		{"pho\x00ne", false},
		{"phone\n", false},
		{"tab\there", false},
		{"del\x7f", false},
		{"c1\u0085", false},
		{"bad\xff", false},
	}
	for _, tt := range tests {
		err := ValidateDeviceID(tt.id)
		if got := err == nil; got != tt.want {
			t.Errorf("ValidateDeviceID(%.20q) = %v, want accepted %v", tt.id, err, tt.want)
		}
		if err != nil && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "deviceId")) {
			t.Errorf("ValidateDeviceID(%.20q) = %v, want ErrInvalid naming deviceId", tt.id, err)
		}
	}
}

func TestValidatePartitionName(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"alice", true},
		{"auth0|5f7c8ec7c33c6c004bbafe82", true},
		{"zoé", true},
		{"victim\ufffd", true},
		{strings.Repeat("u", MaxPartitionNameBytes), true},
		{"", false},
		{strings.Repeat("u", MaxPartitionNameBytes+1), false},
		{"vic\x00tim", false},
		{"victim\nadmin", false},
		{"victim\r", false},
		{"del\x7f", false},
		{"c1\u009b", false},
		{"victim\xff", false},
		{"victim\xed\xa0\x80", false}, // a surrogate encoded as UTF-8
	}
	for _, tt := range tests {
		err := ValidatePartitionName(tt.name)
		if got := err == nil; got != tt.want {
			t.Errorf("ValidatePartitionName(%.20q) = %v, want accepted %v", tt.name, err, tt.want)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidatePartitionName(%.20q) = %v, want ErrInvalid", tt.name, err)
		}
	}
}
