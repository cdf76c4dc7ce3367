package auth_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dalvdb/dalv/auth"
)

func Example() {
	secret := []byte("example-secret-of-at-least-32-bytes!")
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

	token, err := auth.Mint(secret, "alice", time.Hour, now)
	if err != nil {
		panic(err)
	}
	v, err := auth.NewHS256(secret, auth.HS256Options{Now: func() time.Time { return now }})
	if err != nil {
		panic(err)
	}

	raw, err := auth.BearerToken("Bearer " + token)
	if err != nil {
		panic(err)
	}
	claims, err := v.Verify(context.Background(), raw)
	if err != nil {
		panic(err)
	}
	fmt.Println(claims.Subject, claims.ExpiresAt)

	late, _ := auth.NewHS256(secret, auth.HS256Options{Now: func() time.Time { return now.Add(2 * time.Hour) }})
	_, err = late.Verify(context.Background(), raw)
	fmt.Println(errors.Is(err, auth.ErrExpired), err)
	// Output:
	// alice 2026-11-25 11:00:00 +0000 UTC
	// true token expired at 2026-11-25T11:00:00Z
}

func ExampleKeySet() {
	keys, err := auth.NewKeySet([]string{"backend-key-0123456789"})
	if err != nil {
		panic(err)
	}
	fmt.Println(keys.Check("backend-key-0123456789"), keys.Check("guess"))
	// Output: true false
}
