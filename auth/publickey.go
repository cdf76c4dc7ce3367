package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// PublicKeyAlgs are the algorithms [NewPublicKey] verifies, in the order
// messages list them.
var PublicKeyAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// MinRSABits is the smallest RSA modulus a public key may have.
const MinRSABits = 2048

// Defaults of [PublicKeyOptions].
const (
	DefaultJWKSRefresh        = time.Hour
	DefaultJWKSMinRefresh     = time.Minute
	DefaultJWKSMaxRefresh     = 24 * time.Hour
	DefaultUnknownKIDInterval = time.Minute
	DefaultJWKSTimeout        = 10 * time.Second
)

// MaxJWKSBytes bounds the JWKS document read from a URL.
const MaxJWKSBytes = 1 << 20

// maxKIDBytes bounds a kid; providers' are tens of bytes.
const maxKIDBytes = 256

// PEMFile is a PEM document of public keys or certificates, and the name
// messages call it by (its path).
type PEMFile struct {
	Name string
	Data []byte
}

// PublicKeyOptions configures [NewPublicKey]. Keys come from PEM files, JWKS
// URLs or both; at least one is needed. Audience and Issuer are required
// unless NoAudience is set.
type PublicKeyOptions struct {
	// PEM holds public keys ("PUBLIC KEY", "RSA PUBLIC KEY") and
	// certificates ("CERTIFICATE", whose key is used; its dates and chain
	// are not checked). A file may hold several blocks.
	PEM []PEMFile
	// JWKSURLs are fetched at start, then again when their Cache-Control
	// max-age (bounded by JWKSMinRefresh and JWKSMaxRefresh; JWKSRefresh
	// when absent) runs out, and when a token names an unknown kid.
	JWKSURLs []string
	// JWKSOptional lets NewPublicKey succeed when no JWKS can be read at
	// start; the keys then arrive with the first successful refresh.
	JWKSOptional bool
	// Audience must be one of the token's aud values; Issuer must equal
	// its iss.
	Audience, Issuer string
	// NoAudience allows an empty Audience and Issuer: any provider's token
	// signed by one of the keys is then accepted.
	NoAudience bool
	// UserClaim names the claim that holds the user id (default sub).
	UserClaim string
	// Leeway is the clock skew tolerated (0: DefaultLeeway; negative: none).
	Leeway time.Duration
	// Now returns the current time for the token's time claims (nil:
	// time.Now).
	Now func() time.Time
	// Client fetches JWKS (nil: a client with JWKSTimeout).
	Client *http.Client
	// JWKSRefresh is the refresh interval when a JWKS response has no
	// max-age; JWKSMinRefresh and JWKSMaxRefresh bound a max-age, and
	// JWKSMinRefresh is also the wait before retrying a failed refresh.
	JWKSRefresh, JWKSMinRefresh, JWKSMaxRefresh time.Duration
	// UnknownKIDInterval is the least time between two fetches caused by
	// tokens naming unknown kids, so a flood of them costs the provider
	// one request per interval.
	UnknownKIDInterval time.Duration
	// JWKSTimeout bounds one fetch.
	JWKSTimeout time.Duration
	// Logger receives refresh failures and skipped keys (nil: discarded).
	Logger *slog.Logger
}

func (o PublicKeyOptions) withDefaults() PublicKeyOptions {
	if o.JWKSRefresh <= 0 {
		o.JWKSRefresh = DefaultJWKSRefresh
	}
	if o.JWKSMinRefresh <= 0 {
		o.JWKSMinRefresh = DefaultJWKSMinRefresh
	}
	if o.JWKSMaxRefresh <= 0 {
		o.JWKSMaxRefresh = DefaultJWKSMaxRefresh
	}
	if o.UnknownKIDInterval <= 0 {
		o.UnknownKIDInterval = DefaultUnknownKIDInterval
	}
	if o.JWKSTimeout <= 0 {
		o.JWKSTimeout = DefaultJWKSTimeout
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.JWKSTimeout}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// publicKey is one verification key.
type publicKey struct {
	kid    string // "" for a PEM key
	alg    string // the JWK's alg, "" when it allows any that fits the key
	key    any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	source string // file or URL, for messages
}

// keySet is an immutable snapshot of one source's keys.
type keySet struct {
	byKID map[string]*publicKey
	all   []*publicKey
}

func newKeySet(keys []*publicKey) *keySet {
	ks := &keySet{byKID: make(map[string]*publicKey), all: keys}
	for _, k := range keys {
		if k.kid != "" {
			ks.byKID[k.kid] = k
		}
	}
	return ks
}

type publicKeyVerifier struct {
	check *checker
	pem   []*publicKey
	jwks  []*jwksSource
}

// NewPublicKey returns a Verifier for tokens signed with the algorithms of
// [PublicKeyAlgs] by keys from PEM files and JWKS URLs. It fetches every
// JWKS before returning and fails when none can be read, unless
// JWKSOptional. Background refreshes run until ctx ends.
//
// A token's key is chosen by its kid: a kid a JWKS publishes picks that
// key; a kid no JWKS publishes makes each JWKS be fetched again (at most
// once per UnknownKIDInterval) and is then looked up again; a token with no
// kid, or whose kid is still unknown, is tried against the PEM keys (and,
// with no kid, the JWKS keys) that fit its alg. A key verifies only the
// algorithms of its type (RSA: RS*, PS*; P-256: ES256; P-384: ES384;
// P-521: ES512; Ed25519: EdDSA), and only its JWK alg when it has one.
// Headers that name a key by URL or carry one (jku, x5u, jwk, x5c) are
// refused, never followed.
func NewPublicKey(ctx context.Context, opts PublicKeyOptions) (Verifier, error) {
	opts = opts.withDefaults()
	if len(opts.PEM) == 0 && len(opts.JWKSURLs) == 0 {
		return nil, errors.New("public-key tokens need a PEM public key or a JWKS URL")
	}
	if !opts.NoAudience && (opts.Audience == "" || opts.Issuer == "") {
		return nil, errors.New("public-key tokens need an audience and an issuer (--jwt-audience, --jwt-issuer), so a token minted by the same provider for another application is refused; --jwt-no-audience accepts any")
	}
	v := &publicKeyVerifier{check: newChecker(PublicKeyAlgs, claimRules{
		audience: opts.Audience, issuer: opts.Issuer, userClaim: opts.UserClaim,
		leeway: opts.Leeway, now: opts.Now,
	})}
	for _, f := range opts.PEM {
		keys, err := parsePEMKeys(f)
		if err != nil {
			return nil, err
		}
		v.pem = append(v.pem, keys...)
	}
	var failed []error
	for _, u := range opts.JWKSURLs {
		src, err := newJWKSSource(ctx, u, opts)
		if err != nil {
			return nil, err
		}
		if err := src.fetch(ctx); err != nil {
			failed = append(failed, err)
		}
		v.jwks = append(v.jwks, src)
	}
	if len(failed) > 0 && len(failed) == len(opts.JWKSURLs) && !opts.JWKSOptional {
		return nil, fmt.Errorf("no JWKS could be read at start (--jwks-optional starts anyway): %w", errors.Join(failed...))
	}
	for _, err := range failed {
		opts.Logger.Warn("JWKS not read at start; retrying in the background", "err", err)
	}
	for _, src := range v.jwks {
		src.start(ctx)
	}
	return v, nil
}

// Verify implements [Verifier]. It may fetch a JWKS, bounded by ctx and the
// JWKS timeout, when the token names an unknown kid.
func (v *publicKeyVerifier) Verify(ctx context.Context, token string) (*Claims, error) {
	return v.check.verify(token, func(t *jwt.Token) (any, error) { return v.key(ctx, t) })
}

// foreignKeyHeaders name a key by URL or carry one in the token itself;
// a token is never allowed to choose the key that verifies it.
var foreignKeyHeaders = []string{"jku", "x5u", "jwk", "x5c"}

func (v *publicKeyVerifier) key(ctx context.Context, t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	for _, h := range foreignKeyHeaders {
		if _, ok := t.Header[h]; ok {
			return nil, fmt.Errorf("%w: the token's header has %s, a key of its own choosing; this server uses only its configured keys", ErrUnknownKey, h)
		}
	}
	var kid string
	if raw, ok := t.Header["kid"]; ok {
		s, ok := raw.(string)
		if !ok {
			return nil, fmt.Errorf("%w: kid is not a string", ErrMalformedToken)
		}
		if err := checkKID(s); err != nil {
			return nil, err
		}
		kid = s
	}
	if kid != "" && len(v.jwks) > 0 {
		k := v.lookup(kid)
		if k == nil {
			for _, src := range v.jwks {
				src.refetchUnknown(ctx)
			}
			k = v.lookup(kid)
		}
		if k != nil {
			return k.fits(alg)
		}
	}
	var set jwt.VerificationKeySet
	candidates := v.pem
	if kid == "" {
		for _, src := range v.jwks {
			candidates = append(candidates[:len(candidates):len(candidates)], src.keys.Load().all...)
		}
	}
	for _, k := range candidates {
		if key, err := k.fits(alg); err == nil {
			set.Keys = append(set.Keys, key)
		}
	}
	if len(set.Keys) == 0 {
		if kid != "" {
			return nil, fmt.Errorf("%w: no configured key has kid %s (known: %s)", ErrUnknownKey, quote(kid), v.knownKIDs())
		}
		return nil, fmt.Errorf("%w: the token has no kid and no configured key fits %s", ErrUnknownKey, alg)
	}
	return set, nil
}

// knownKIDs lists the kids of the JWKS keys, a few of them, for messages.
func (v *publicKeyVerifier) knownKIDs() string {
	var kids []string
	for _, src := range v.jwks {
		for _, k := range src.keys.Load().all {
			if k.kid != "" {
				kids = append(kids, quote(k.kid))
			}
		}
	}
	switch {
	case len(kids) == 0:
		return "none"
	case len(kids) > 8:
		return strings.Join(kids[:8], ", ") + ", ..."
	}
	return strings.Join(kids, ", ")
}

func (v *publicKeyVerifier) lookup(kid string) *publicKey {
	for _, src := range v.jwks {
		if k := src.keys.Load().byKID[kid]; k != nil {
			return k
		}
	}
	return nil
}

// checkKID refuses a kid that could not be a key id: one with control
// characters, whitespace or the characters of paths and URLs. A kid is only
// ever a map key here, but a strange one is an attack on something, and is
// refused before it can cause a fetch. Base64 ("+", "/", "=") is allowed,
// as some providers use it.
func checkKID(kid string) error {
	if len(kid) > maxKIDBytes {
		return fmt.Errorf("%w: kid is %d bytes, over %d", ErrUnknownKey, len(kid), maxKIDBytes)
	}
	for _, r := range kid {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune(`\?#%"<>`, r) {
			return fmt.Errorf("%w: kid %s holds %q, which no key id here has", ErrUnknownKey, quote(kid), r)
		}
	}
	if strings.Contains(kid, "..") || strings.Contains(kid, "://") || strings.HasPrefix(kid, "/") {
		return fmt.Errorf("%w: kid %s looks like a path or URL, not a key id", ErrUnknownKey, quote(kid))
	}
	return nil
}

// fits returns the key for a token of alg, or why it may not verify one.
func (k *publicKey) fits(alg string) (any, error) {
	if k.alg != "" && k.alg != alg {
		return nil, fmt.Errorf("%w: %s: key %s from %s is for %s only", ErrAlgorithm, quote(alg), quote(k.kid), k.source, k.alg)
	}
	if !keyFitsAlg(k.key, alg) {
		return nil, fmt.Errorf("%w: %s: key %s from %s is a %s key", ErrAlgorithm, quote(alg), quote(k.kid), k.source, keyKind(k.key))
	}
	return k.key, nil
}

// keyFitsAlg reports whether alg is an algorithm of key's type. This is
// what keeps an RSA key from verifying any other algorithm, whatever the
// token's header says.
func keyFitsAlg(key any, alg string) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return alg == "ES256"
		case elliptic.P384():
			return alg == "ES384"
		case elliptic.P521():
			return alg == "ES512"
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

func keyKind(key any) string {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return "RSA"
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", key)
}

// usableKey checks a public key's type and size.
func usableKey(key any) error {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return fmt.Errorf("RSA key of %d bits, need at least %d", k.N.BitLen(), MinRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("ECDSA key on curve %s; use P-256, P-384 or P-521", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("unsupported key type %T; use RSA, ECDSA or Ed25519", key)
}

// parsePEMKeys reads the public keys and certificates of a PEM file.
func parsePEMKeys(f PEMFile) ([]*publicKey, error) {
	var keys []*publicKey
	rest := f.Data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE") {
				return nil, fmt.Errorf("public key file %s holds a %s: give the public key or certificate only", f.Name, block.Type)
			}
			return nil, fmt.Errorf("public key file %s: a %q block is neither a public key nor a certificate", f.Name, block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("public key file %s: %s block %d: %w", f.Name, block.Type, len(keys)+1, err)
		}
		if err := usableKey(key); err != nil {
			return nil, fmt.Errorf("public key file %s: %w", f.Name, err)
		}
		keys = append(keys, &publicKey{key: key, source: f.Name})
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("public key file %s holds no PEM public key or certificate", f.Name)
	}
	return keys, nil
}
