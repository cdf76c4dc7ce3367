package auth

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// countingVerifier counts calls to the wrapped verifier.
type countingVerifier struct {
	Verifier
	calls int
}

func (c *countingVerifier) Verify(ctx context.Context, tok string) (*Claims, error) {
	c.calls++
	return c.Verifier.Verify(ctx, tok)
}

func TestCached(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	inner, err := NewHS256(secret, HS256Options{Now: clock, Leeway: -1})
	if err != nil {
		t.Fatal(err)
	}
	cv := &countingVerifier{Verifier: inner}
	v := Cached(cv, 32, clock)
	tok, err := Mint(secret, "alice", time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		cl, err := v.Verify(ctx, tok)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := cl.Subject, "alice"; got != want {
			t.Fatalf("Subject = %q, want %q", got, want)
		}
	}
	if got, want := cv.calls, 1; got != want {
		t.Errorf("inner verifications = %d, want %d (the cache should answer the repeats)", got, want)
	}

	// Refusals are not cached: a forged token is checked every time.
	forged := tok[:len(tok)-2] + "AA"
	for range 2 {
		if _, err := v.Verify(ctx, forged); !errors.Is(err, ErrSignature) {
			t.Fatalf("forged token: err = %v, want ErrSignature", err)
		}
	}
	if got, want := cv.calls, 3; got != want {
		t.Errorf("inner verifications = %d, want %d", got, want)
	}

	// Past its expiry a cached token is refused, as the verifier refuses it.
	now = now.Add(2 * time.Minute)
	if _, err := v.Verify(ctx, tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired cached token: err = %v, want ErrExpired", err)
	}

	// The cache stays bounded.
	now = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	for i := range 500 {
		tok, err := Mint(secret, fmt.Sprintf("user-%d", i), time.Minute, now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	c := v.(*cached)
	for i := range c.shards {
		n += len(c.shards[i].m)
	}
	if n > 32 {
		t.Errorf("cache holds %d tokens, want at most 32", n)
	}
}
