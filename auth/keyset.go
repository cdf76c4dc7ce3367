package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
)

// MinAPIKeyBytes is the shortest backend API key [NewKeySet] accepts.
const MinAPIKeyBytes = 16

// KeySet holds the API keys that trusted backends present. It keeps only
// their SHA-256 digests.
type KeySet struct {
	digests [][sha256.Size]byte
}

// NewKeySet returns a KeySet of keys, each at least [MinAPIKeyBytes] long.
// An empty list is allowed and yields a set that accepts nothing.
func NewKeySet(keys []string) (*KeySet, error) {
	ks := &KeySet{digests: make([][sha256.Size]byte, 0, len(keys))}
	for i, k := range keys {
		switch {
		case k == "":
			return nil, fmt.Errorf("%w: API key %d of %d is empty", ErrWeakKey, i+1, len(keys))
		case len(k) < MinAPIKeyBytes:
			return nil, fmt.Errorf("%w: API key %d of %d is %d bytes, need at least %d", ErrWeakKey, i+1, len(keys), len(k), MinAPIKeyBytes)
		}
		ks.digests = append(ks.digests, sha256.Sum256([]byte(k)))
	}
	return ks, nil
}

// Check reports whether key is one of the set's keys. Its running time does
// not depend on the contents or lengths of the stored keys, nor on which
// key, if any, matched: the presented key is hashed to a fixed size and
// compared in constant time against every stored digest.
func (ks *KeySet) Check(key string) bool {
	if ks == nil {
		return false
	}
	d := sha256.Sum256([]byte(key))
	match := 0
	for i := range ks.digests {
		match |= subtle.ConstantTimeCompare(d[:], ks.digests[i][:])
	}
	return match == 1
}

// Len returns the number of keys in the set.
func (ks *KeySet) Len() int {
	if ks == nil {
		return 0
	}
	return len(ks.digests)
}
