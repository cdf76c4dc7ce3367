package engine

import (
	"errors"
	"testing"
)

// FuzzDecodePageToken feeds arbitrary strings to the page token decoder: it
// never panics, refuses with ErrInvalid only, and the key of a token it
// accepts makes a token that decodes to the same key. The seeds in
// testdata/fuzz/FuzzDecodePageToken are tokens List gave.
func FuzzDecodePageToken(f *testing.F) {
	f.Add("")
	f.Add(encodePageToken("a"))
	f.Add("!!")
	f.Fuzz(func(t *testing.T, token string) {
		key, err := decodePageToken(token)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("decodePageToken(%q) error %v is not ErrInvalid", token, err)
			}
			return
		}
		if got, err := decodePageToken(encodePageToken(key)); err != nil || got != key {
			t.Fatalf("decodePageToken(%q) = %q, which does not survive a round trip: %q, %v", token, key, got, err)
		}
	})
}
