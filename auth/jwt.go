package auth

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// checker holds what every JWT verifier of this package checks alike: the
// token's shape, its algorithm among those accepted, its time claims, aud,
// iss, strict JSON and the user id. A verifier adds only its keys.
type checker struct {
	algs      []string // accepted, in the order messages list them
	audience  string
	issuer    string
	userClaim string
	parser    *jwt.Parser
}

// claimRules are the claim checks a verifier is configured with.
type claimRules struct {
	audience, issuer, userClaim string
	leeway                      time.Duration
	now                         func() time.Time
}

func newChecker(algs []string, r claimRules) *checker {
	switch {
	case r.leeway == 0:
		r.leeway = DefaultLeeway
	case r.leeway < 0:
		r.leeway = 0
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.userClaim == "" {
		r.userClaim = DefaultUserClaim
	}
	popts := []jwt.ParserOption{
		jwt.WithValidMethods(algs),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(r.leeway),
		jwt.WithTimeFunc(r.now),
		// Refuse non-canonical base64, so one token has one spelling.
		jwt.WithStrictDecoding(),
	}
	if r.audience != "" {
		popts = append(popts, jwt.WithAudience(r.audience))
	}
	if r.issuer != "" {
		popts = append(popts, jwt.WithIssuer(r.issuer))
	}
	return &checker{algs: algs, audience: r.audience, issuer: r.issuer, userClaim: r.userClaim, parser: jwt.NewParser(popts...)}
}

// DefaultUserClaim is the claim that holds the user id unless configured
// otherwise.
const DefaultUserClaim = "sub"

// verify parses and checks token, taking its key from key. key reports its
// own refusals through keyErr, so they reach the caller as this package's
// sentinels rather than wrapped in golang-jwt's.
func (c *checker) verify(token string, key func(*jwt.Token) (any, error)) (*Claims, error) {
	if token == "" {
		return nil, ErrMissingToken
	}
	if len(token) > MaxTokenBytes {
		return nil, fmt.Errorf("%w: token is %d bytes, limit is %d", ErrMalformedToken, len(token), MaxTokenBytes)
	}
	if n := strings.Count(token, ".") + 1; n != 3 {
		return nil, fmt.Errorf("%w: a JWT has 3 dot-separated parts, this has %d", ErrMalformedToken, n)
	}
	var keyErr error
	mc := jwt.MapClaims{}
	tok, err := c.parser.ParseWithClaims(token, mc, func(t *jwt.Token) (any, error) {
		k, err := key(t)
		keyErr = err
		return k, err
	})
	if err == nil || errors.Is(err, jwt.ErrTokenInvalidClaims) {
		// The signature is good: check that the JSON signed has one
		// reading before trusting any claim in it, including exp.
		if err := strictSegments(token); err != nil {
			return nil, err
		}
	}
	if err != nil {
		if keyErr != nil {
			return nil, keyErr
		}
		return nil, c.refusal(tok, mc, err)
	}
	return verified(mc, c.userClaim)
}

func (c *checker) algError(alg string) error {
	return fmt.Errorf("%w: %s (this server accepts %s)", ErrAlgorithm, quote(alg), strings.Join(c.algs, ", "))
}

// refusal maps a golang-jwt error onto this package's sentinels. The parser
// checks in order: syntax, alg, signature, claims; so a forged token is
// reported as such even if it is also expired.
func (c *checker) refusal(tok *jwt.Token, mc jwt.MapClaims, err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fmt.Errorf("%w: %s", ErrMalformedToken, detail(err, jwt.ErrTokenMalformed))
	case tok != nil && tok.Header != nil && !errors.Is(err, jwt.ErrTokenInvalidClaims):
		alg, ok := tok.Header["alg"].(string)
		if !ok {
			return fmt.Errorf("%w: header has no alg", ErrMalformedToken)
		}
		accepted := false
		for _, a := range c.algs {
			accepted = accepted || a == alg
		}
		if !accepted {
			return c.algError(alg)
		}
		if errors.Is(err, jwt.ErrTokenSignatureInvalid) {
			return fmt.Errorf("%w: not signed with this server's key, or altered after signing", ErrSignature)
		}
	case errors.Is(err, jwt.ErrTokenInvalidClaims):
		return c.claimsRefusal(mc, err)
	}
	return fmt.Errorf("%w: %v", ErrMalformedToken, err)
}

// claimsRefusal explains why the claims of a correctly signed token were
// refused. golang-jwt names a missing or mistyped claim only in its message,
// so those cases are told apart by looking at the claims themselves.
func (c *checker) claimsRefusal(mc jwt.MapClaims, err error) error {
	exp, expErr := mc.GetExpirationTime()
	switch {
	case expErr != nil:
		return fmt.Errorf("%w: exp is not a number", ErrMissingExpiry)
	case exp == nil:
		return ErrMissingExpiry
	case errors.Is(err, jwt.ErrTokenExpired):
		return fmt.Errorf("%w at %s", ErrExpired, stamp(exp.Time))
	}
	nbf, nbfErr := mc.GetNotBefore()
	iat, iatErr := mc.GetIssuedAt()
	switch {
	case nbfErr != nil:
		return fmt.Errorf("%w: nbf is not a number", ErrMalformedToken)
	case iatErr != nil:
		return fmt.Errorf("%w: iat is not a number", ErrMalformedToken)
	case errors.Is(err, jwt.ErrTokenNotValidYet) && nbf != nil:
		return fmt.Errorf("%w: valid from %s", ErrNotYetValid, stamp(nbf.Time))
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued) && iat != nil:
		return fmt.Errorf("%w: issued in the future, at %s", ErrNotYetValid, stamp(iat.Time))
	}
	if c.audience != "" {
		aud, audErr := mc.GetAudience()
		switch {
		case audErr != nil:
			return fmt.Errorf("%w: want %s, aud is not a string or array of strings", ErrAudience, quote(c.audience))
		case len(aud) == 0 || len(aud) == 1 && aud[0] == "":
			return fmt.Errorf("%w: want %s, token has no aud", ErrAudience, quote(c.audience))
		case errors.Is(err, jwt.ErrTokenInvalidAudience):
			return fmt.Errorf("%w: want %s, token is for %s", ErrAudience, quote(c.audience), quote(strings.Join(aud, ", ")))
		}
	}
	if c.issuer != "" {
		iss, issErr := mc.GetIssuer()
		switch {
		case issErr != nil:
			return fmt.Errorf("%w: want %s, iss is not a string", ErrIssuer, quote(c.issuer))
		case iss == "":
			return fmt.Errorf("%w: want %s, token has no iss", ErrIssuer, quote(c.issuer))
		case errors.Is(err, jwt.ErrTokenInvalidIssuer):
			return fmt.Errorf("%w: want %s, token is from %s", ErrIssuer, quote(c.issuer), quote(iss))
		}
	}
	return fmt.Errorf("%w: %s", ErrMalformedToken, detail(err, jwt.ErrTokenInvalidClaims))
}

// detail is golang-jwt's message without its sentinel's own text in front.
func detail(err, sentinel error) string {
	return strings.TrimPrefix(err.Error(), sentinel.Error()+": ")
}

func stamp(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}
