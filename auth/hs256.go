package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/dalvdb/dalv/engine"
)

// MinSecretBytes is the shortest HS256 secret [NewHS256] and [Mint] accept:
// the output size of SHA-256, below which the key, not the hash, is the
// weak point.
const MinSecretBytes = 32

// MaxTokenBytes bounds the tokens a Verifier will parse. Anything longer is
// refused before its JSON is decoded, so unauthenticated callers cannot make
// the server parse megabytes per request.
const MaxTokenBytes = 16 << 10

// DefaultLeeway is the clock skew tolerated when [HS256Options.Leeway] is
// zero. Tokens are minted on other machines; without some leeway a token
// minted on a clock a second ahead would be refused as issued in the future.
const DefaultLeeway = 5 * time.Second

const algHS256 = "HS256"

// HS256Options configures [NewHS256]. The zero value is valid.
type HS256Options struct {
	// Audience, when set, must be one of the token's aud values.
	Audience string
	// Issuer, when set, must equal the token's iss.
	Issuer string
	// Leeway is the clock skew tolerated when checking exp, nbf and iat.
	// Zero means DefaultLeeway; a negative value means none.
	Leeway time.Duration
	// Now returns the current time; nil means time.Now. Tests inject a clock.
	Now func() time.Time
}

type hs256 struct {
	secret []byte
	opts   HS256Options
	parser *jwt.Parser
}

// NewHS256 returns a Verifier for tokens signed with HMAC-SHA256 under
// secret, which must be at least [MinSecretBytes] long. NewHS256 keeps its
// own copies of secret and opts.
func NewHS256(secret []byte, opts HS256Options) (Verifier, error) {
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("%w: HS256 secret is %d bytes, need at least %d", ErrWeakKey, len(secret), MinSecretBytes)
	}
	switch {
	case opts.Leeway == 0:
		opts.Leeway = DefaultLeeway
	case opts.Leeway < 0:
		opts.Leeway = 0
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	popts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{algHS256}),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(opts.Leeway),
		jwt.WithTimeFunc(opts.Now),
		// Refuse non-canonical base64, so one token has one spelling.
		jwt.WithStrictDecoding(),
	}
	if opts.Audience != "" {
		popts = append(popts, jwt.WithAudience(opts.Audience))
	}
	if opts.Issuer != "" {
		popts = append(popts, jwt.WithIssuer(opts.Issuer))
	}
	return &hs256{
		secret: append([]byte(nil), secret...),
		opts:   opts,
		parser: jwt.NewParser(popts...),
	}, nil
}

// Verify implements [Verifier]. It does no I/O and ignores ctx.
func (v *hs256) Verify(_ context.Context, token string) (*Claims, error) {
	if token == "" {
		return nil, ErrMissingToken
	}
	if len(token) > MaxTokenBytes {
		return nil, fmt.Errorf("%w: token is %d bytes, limit is %d", ErrMalformedToken, len(token), MaxTokenBytes)
	}
	if n := strings.Count(token, ".") + 1; n != 3 {
		return nil, fmt.Errorf("%w: a JWT has 3 dot-separated parts, this has %d", ErrMalformedToken, n)
	}
	mc := jwt.MapClaims{}
	tok, err := v.parser.ParseWithClaims(token, mc, v.key)
	if err == nil || errors.Is(err, jwt.ErrTokenInvalidClaims) {
		// The signature is good: check that the JSON signed has one
		// reading before trusting any claim in it, including exp.
		if err := strictSegments(token); err != nil {
			return nil, err
		}
	}
	if err != nil {
		return nil, v.refusal(tok, mc, err)
	}
	return verified(mc, "sub")
}

// key hands the secret only to HS256 tokens. WithValidMethods already refuses
// the others; this second check keeps an HMAC secret from ever being used as
// another algorithm's key if that option is lost.
func (v *hs256) key(t *jwt.Token) (any, error) {
	if t.Method != jwt.SigningMethodHS256 {
		return nil, algError(t.Method.Alg())
	}
	return v.secret, nil
}

func algError(alg string) error {
	return fmt.Errorf("%w: %s (this server accepts %s)", ErrAlgorithm, quote(alg), algHS256)
}

// refusal maps a golang-jwt error onto this package's sentinels. The parser
// checks in order: syntax, alg, signature, claims; so a forged token is
// reported as such even if it is also expired.
func (v *hs256) refusal(tok *jwt.Token, mc jwt.MapClaims, err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fmt.Errorf("%w: %s", ErrMalformedToken, detail(err, jwt.ErrTokenMalformed))
	case tok != nil && tok.Header != nil && !errors.Is(err, jwt.ErrTokenInvalidClaims):
		alg, ok := tok.Header["alg"].(string)
		if !ok {
			return fmt.Errorf("%w: header has no alg", ErrMalformedToken)
		}
		if alg != algHS256 {
			return algError(alg)
		}
		if errors.Is(err, jwt.ErrTokenSignatureInvalid) {
			return fmt.Errorf("%w: not signed with this server's key, or altered after signing", ErrSignature)
		}
	case errors.Is(err, jwt.ErrTokenInvalidClaims):
		return v.claimsRefusal(mc, err)
	}
	return fmt.Errorf("%w: %v", ErrMalformedToken, err)
}

// claimsRefusal explains why the claims of a correctly signed token were
// refused. golang-jwt names a missing or mistyped claim only in its message,
// so those cases are told apart by looking at the claims themselves.
func (v *hs256) claimsRefusal(mc jwt.MapClaims, err error) error {
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
	if v.opts.Audience != "" {
		aud, audErr := mc.GetAudience()
		switch {
		case audErr != nil:
			return fmt.Errorf("%w: want %s, aud is not a string or array of strings", ErrAudience, quote(v.opts.Audience))
		case len(aud) == 0 || len(aud) == 1 && aud[0] == "":
			return fmt.Errorf("%w: want %s, token has no aud", ErrAudience, quote(v.opts.Audience))
		case errors.Is(err, jwt.ErrTokenInvalidAudience):
			return fmt.Errorf("%w: want %s, token is for %s", ErrAudience, quote(v.opts.Audience), quote(strings.Join(aud, ", ")))
		}
	}
	if v.opts.Issuer != "" {
		iss, issErr := mc.GetIssuer()
		switch {
		case issErr != nil:
			return fmt.Errorf("%w: want %s, iss is not a string", ErrIssuer, quote(v.opts.Issuer))
		case iss == "":
			return fmt.Errorf("%w: want %s, token has no iss", ErrIssuer, quote(v.opts.Issuer))
		case errors.Is(err, jwt.ErrTokenInvalidIssuer):
			return fmt.Errorf("%w: want %s, token is from %s", ErrIssuer, quote(v.opts.Issuer), quote(iss))
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

// Mint signs a development HS256 token for subject that carries sub, iat
// (now) and exp (now+ttl). It is what `dalv token` prints and what tests use;
// production tokens come from the application's own issuer.
func Mint(secret []byte, subject string, ttl time.Duration, now time.Time) (string, error) {
	if len(secret) < MinSecretBytes {
		return "", fmt.Errorf("%w: HS256 secret is %d bytes, need at least %d", ErrWeakKey, len(secret), MinSecretBytes)
	}
	if subject == "" {
		return "", fmt.Errorf("mint: %w", ErrMissingSubject)
	}
	if err := engine.ValidatePartitionName(subject); err != nil {
		return "", fmt.Errorf("mint: %w: %s", ErrUserID, err.Error())
	}
	if ttl <= 0 {
		return "", fmt.Errorf("mint: ttl must be positive, got %s", ttl)
	}
	claims := jwt.MapClaims{
		"sub": subject,
		"iat": now.Unix(),
		"exp": now.Add(ttl).Unix(),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}
