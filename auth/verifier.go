package auth

import (
	"context"
	"strconv"
	"time"
)

// Verifier checks a device token and returns its claims.
//
// Verify returns either claims with a non-empty Subject and no error, or nil
// and an error matching one of this package's sentinel errors.
type Verifier interface {
	Verify(ctx context.Context, token string) (*Claims, error)
}

// Claims is what a verified token says about its bearer.
type Claims struct {
	// Subject is the sub claim: the user id, never empty.
	Subject string
	// ExpiresAt is the exp claim.
	ExpiresAt time.Time
	// Raw holds every claim of the token as decoded from JSON (strings,
	// float64, bool, []any, map[string]any, nil), for decisions such as
	// claim-gated shared partitions.
	Raw map[string]any
}

// Has reports whether the claim name is the string value, or is an array
// containing the string value. Claims of other types never match.
func (c *Claims) Has(name, value string) bool {
	if c == nil {
		return false
	}
	switch v := c.Raw[name].(type) {
	case string:
		return v == value
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok && s == value {
				return true
			}
		}
	case []string:
		for _, s := range v {
			if s == value {
				return true
			}
		}
	}
	return false
}

// quote renders a value taken from a token for an error message: quoted,
// escaped and cut short, so a hostile token cannot flood or forge log lines.
func quote(s string) string {
	const limit = 64
	if len(s) > limit {
		return strconv.Quote(s[:limit]) + "..."
	}
	return strconv.Quote(s)
}
