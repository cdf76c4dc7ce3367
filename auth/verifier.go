package auth

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/dalvdb/dalv/value"
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
	// Subject is the user id: the sub claim, or the configured user claim;
	// never empty.
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

// verified builds the Claims of a token whose signature and time claims
// have been checked, taking the user id from userClaim. The user id must be
// a non-empty string that is a valid partition name, the rule every user id
// follows ([value.ValidatePartitionName]).
func verified(mc jwt.MapClaims, userClaim string) (*Claims, error) {
	name := "the sub claim"
	if userClaim != "sub" {
		name = "the user claim " + quote(userClaim)
	}
	raw, ok := mc[userClaim]
	if !ok {
		return nil, fmt.Errorf("%w: %s is missing", ErrMissingSubject, name)
	}
	id, ok := raw.(string)
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: %s is not a string", ErrMissingSubject, name)
	case id == "":
		return nil, fmt.Errorf("%w: %s is empty", ErrMissingSubject, name)
	}
	if err := value.ValidatePartitionName(id); err != nil {
		// Not wrapped: this is an authentication failure, not a bad argument.
		return nil, fmt.Errorf("%w: %s is not a usable user id: %s", ErrUserID, name, err.Error())
	}
	// The parser has already required exp and checked its type.
	exp, _ := mc.GetExpirationTime()
	return &Claims{Subject: id, ExpiresAt: exp.Time.UTC(), Raw: mc}, nil
}
