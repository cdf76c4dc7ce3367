package rules

import (
	"errors"
	"testing"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/value"
)

// FuzzParse: any input either compiles into rules whose JSON form compiles
// to the same hash, or fails with *CompileErrors; it never panics.
func FuzzParse(f *testing.F) {
	f.Add([]byte(shop))
	f.Add([]byte(`{"default":"refuse","rules":[{"match":"a/*","kind":"list","max_items":3}]}`))
	f.Add([]byte("rules:\n  - match: \"**\"\n    check: \"key.size() < 10\"\n"))
	f.Add([]byte("rules: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *CompileError", err)
			}
			return
		}
		again, err := Parse(s.Source())
		if err != nil {
			t.Fatalf("source %s does not compile: %v", s.Source(), err)
		}
		if again.Hash() != s.Hash() {
			t.Fatalf("hash changed through Source")
		}
	})
}

// FuzzCheck: checking any value against the shop's rules never panics and
// refuses only with one of the two kinds.
func FuzzCheck(f *testing.F) {
	s, err := Parse([]byte(shop))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("cart/qty/a", []byte("3"), []byte(nil), false)
	f.Add("profile", []byte(`{"name":"x","createdAt":1}`), []byte(`{"createdAt":2}`), false)
	f.Add("saved", []byte(`"a"`), []byte(`"b"`), true)
	f.Add("inbox/u1", []byte(`"\u0000"`), []byte{0xff}, false)
	f.Fuzz(func(t *testing.T, key string, v, old []byte, list bool) {
		w := Write{Key: key, Op: dalvv1.OpKind_OP_KIND_PUT, New: value.Scalar(v), Writer: Device, User: "u1"}
		if list {
			w.New = value.List(v, old)
		}
		if old != nil {
			w.Old = value.Scalar(old)
		}
		err := s.Check(w)
		if err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrPermission) {
			t.Fatalf("refusal %v is of neither kind", err)
		}
	})
}
