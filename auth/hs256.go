package auth

import (
	"context"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/dalvdb/dalv/value"
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
	// UserClaim names the claim that holds the user id; empty means
	// DefaultUserClaim (sub).
	UserClaim string
}

type hs256 struct {
	secret []byte
	check  *checker
}

// NewHS256 returns a Verifier for tokens signed with HMAC-SHA256 under
// secret, which must be at least [MinSecretBytes] long. NewHS256 keeps its
// own copies of secret and opts.
func NewHS256(secret []byte, opts HS256Options) (Verifier, error) {
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("%w: HS256 secret is %d bytes, need at least %d", ErrWeakKey, len(secret), MinSecretBytes)
	}
	return &hs256{
		secret: append([]byte(nil), secret...),
		check: newChecker([]string{algHS256}, claimRules{
			audience: opts.Audience, issuer: opts.Issuer, userClaim: opts.UserClaim,
			leeway: opts.Leeway, now: opts.Now,
		}),
	}, nil
}

// Verify implements [Verifier]. It does no I/O and ignores ctx.
func (v *hs256) Verify(_ context.Context, token string) (*Claims, error) {
	return v.check.verify(token, v.key)
}

// key hands the secret only to HS256 tokens. WithValidMethods already refuses
// the others; this second check keeps an HMAC secret from ever being used as
// another algorithm's key if that option is lost.
func (v *hs256) key(t *jwt.Token) (any, error) {
	if t.Method != jwt.SigningMethodHS256 {
		return nil, v.check.algError(t.Method.Alg())
	}
	return v.secret, nil
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
	if err := value.ValidatePartitionName(subject); err != nil {
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
