package auth

import (
	"encoding/base64"
	"errors"
	"testing"
)

func TestGenerateSecret(t *testing.T) {
	tests := []struct {
		name string
		n    int
		want error
	}{
		{"hs256 secret", MinSecretBytes, nil},
		{"api key", MinAPIKeyBytes, nil},
		{"large", 64, nil},
		{"too short", MinAPIKeyBytes - 1, ErrWeakKey},
		{"zero", 0, ErrWeakKey},
		{"negative", -1, ErrWeakKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := GenerateSecret(tt.n)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("GenerateSecret(%d) error = %v, want %v", tt.n, err, tt.want)
			}
			if err != nil {
				return
			}
			b, err := base64.RawURLEncoding.DecodeString(s)
			if err != nil {
				t.Fatalf("GenerateSecret(%d) = %q, not unpadded base64url: %v", tt.n, s, err)
			}
			if got, want := len(b), tt.n; got != want {
				t.Errorf("GenerateSecret(%d) decodes to %d bytes, want %d", tt.n, got, want)
			}
		})
	}
}

func TestGenerateSecretIsUsable(t *testing.T) {
	s, err := GenerateSecret(MinSecretBytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewHS256([]byte(s), HS256Options{}); err != nil {
		t.Errorf("NewHS256(GenerateSecret()) = %v", err)
	}
	if _, err := NewKeySet([]string{s}); err != nil {
		t.Errorf("NewKeySet(GenerateSecret()) = %v", err)
	}
	seen := map[string]bool{}
	for range 100 {
		s, err := GenerateSecret(MinAPIKeyBytes)
		if err != nil {
			t.Fatal(err)
		}
		if seen[s] {
			t.Fatalf("GenerateSecret returned %q twice", s)
		}
		seen[s] = true
	}
}
