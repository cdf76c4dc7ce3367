package auth

import (
	"errors"
	"testing"
)

func TestNewKeySet(t *testing.T) {
	tests := []struct {
		name string
		keys []string
		want error
	}{
		{"none", nil, nil},
		{"one", []string{"0123456789abcdef"}, nil},
		{"two", []string{"0123456789abcdef", "fedcba9876543210-longer"}, nil},
		{"empty key", []string{"0123456789abcdef", ""}, ErrWeakKey},
		{"short key", []string{"0123456789abcde"}, ErrWeakKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks, err := NewKeySet(tt.keys)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("NewKeySet() error = %v, want %v", err, tt.want)
			}
			if err == nil {
				if got, want := ks.Len(), len(tt.keys); got != want {
					t.Errorf("Len() = %d, want %d", got, want)
				}
			}
		})
	}
}

func TestKeySetCheck(t *testing.T) {
	ks, err := NewKeySet([]string{"backend-key-one-0001", "backend-key-two-0002-and-longer"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, key string
		want      bool
	}{
		{"first", "backend-key-one-0001", true},
		{"second", "backend-key-two-0002-and-longer", true},
		{"empty", "", false},
		{"prefix", "backend-key-one-000", false},
		{"extended", "backend-key-one-00011", false},
		{"one byte off", "backend-key-one-0002", false},
		{"case differs", "BACKEND-KEY-ONE-0001", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, want := ks.Check(tt.key), tt.want; got != want {
				t.Errorf("Check(%q) = %v, want %v", tt.key, got, want)
			}
		})
	}
}

func TestKeySetEmpty(t *testing.T) {
	var nilSet *KeySet
	empty, err := NewKeySet(nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, ks := range map[string]*KeySet{"nil": nilSet, "empty": empty} {
		t.Run(name, func(t *testing.T) {
			for _, key := range []string{"", "backend-key-one-0001"} {
				if got, want := ks.Check(key), false; got != want {
					t.Errorf("Check(%q) = %v, want %v", key, got, want)
				}
			}
		})
	}
}
