package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

var (
	testSecret  = []byte("dalv-test-secret-0123456789abcdef")
	otherSecret = []byte("another-secret-that-is-long-enough!")
	testNow     = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
)

// sentinels lists every error a Verifier may return.
var sentinels = []error{
	ErrMissingToken, ErrMalformedToken, ErrAlgorithm, ErrSignature, ErrExpired,
	ErrNotYetValid, ErrMissingExpiry, ErrMissingSubject, ErrAudience, ErrIssuer,
	ErrNotUTF8, ErrDuplicateClaim, ErrUserID, ErrUnknownKey,
}

func at(t time.Time) func() time.Time { return func() time.Time { return t } }

func newVerifier(tb testing.TB, opts HS256Options) Verifier {
	tb.Helper()
	if opts.Now == nil {
		opts.Now = at(testNow)
	}
	v, err := NewHS256(testSecret, opts)
	if err != nil {
		tb.Fatalf("NewHS256: %v", err)
	}
	return v
}

// claims returns valid claims for testNow, changed by kv pairs; a nil value
// deletes the claim.
func claims(kv ...any) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub": "alice",
		"iat": testNow.Add(-time.Minute).Unix(),
		"exp": testNow.Add(time.Hour).Unix(),
	}
	for i := 0; i < len(kv); i += 2 {
		name := kv[i].(string)
		if kv[i+1] == nil {
			delete(c, name)
			continue
		}
		c[name] = kv[i+1]
	}
	return c
}

func sign(tb testing.TB, method jwt.SigningMethod, key any, c jwt.MapClaims) string {
	tb.Helper()
	s, err := jwt.NewWithClaims(method, c).SignedString(key)
	if err != nil {
		tb.Fatalf("sign %s: %v", method.Alg(), err)
	}
	return s
}

// handmade joins a header and claims given as JSON with a raw signature
// segment, as an attacker would.
func handmade(header, payload, sig string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc([]byte(payload)) + "." + sig
}

func payload(tb testing.TB, c jwt.MapClaims) string {
	tb.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// matching returns the sentinels err matches.
func matching(err error) []error {
	var m []error
	for _, s := range sentinels {
		if errors.Is(err, s) {
			m = append(m, s)
		}
	}
	return m
}

func TestVerify(t *testing.T) {
	valid := sign(t, jwt.SigningMethodHS256, testSecret, claims())
	parts := strings.Split(valid, ".")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	// A signature segment whose unused trailing bits are set: it decodes to
	// the same bytes under lenient base64, so only strict decoding refuses it.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, parts[2][len(parts[2])-1])
	nonCanonical := parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-1] + string(alphabet[last^1])

	tests := []struct {
		name    string
		opts    HS256Options
		token   string
		want    error  // nil: accepted
		wantMsg string // substring of the error message
	}{
		{name: "valid", token: valid},
		{name: "valid with custom claims", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("groups", []string{"a", "b"}))},
		{name: "expired within leeway", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("exp", testNow.Add(-3*time.Second).Unix()))},
		{name: "issued within leeway in the future", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("iat", testNow.Add(3*time.Second).Unix()))},

		{name: "empty", token: "", want: ErrMissingToken},
		{name: "garbage", token: "not a token", want: ErrMalformedToken, wantMsg: "3 dot-separated parts, this has 1"},
		{name: "four segments", token: valid + ".x", want: ErrMalformedToken, wantMsg: "this has 4"},
		{name: "empty segments", token: "..", want: ErrMalformedToken},
		{name: "bad base64", token: "a!b.c.d", want: ErrMalformedToken, wantMsg: "base64"},
		{name: "header not JSON", token: base64.RawURLEncoding.EncodeToString([]byte("nope")) + "." + parts[1] + "." + parts[2], want: ErrMalformedToken, wantMsg: "JSON"},
		{name: "claims not an object", token: handmade(`{"alg":"HS256"}`, `[1,2]`, parts[2]), want: ErrMalformedToken},
		{name: "too long", token: strings.Repeat("a", MaxTokenBytes) + ".b.c", want: ErrMalformedToken, wantMsg: "limit is 16384"},
		{name: "padded base64", token: parts[0] + "." + parts[1] + "." + parts[2] + "=", want: ErrMalformedToken},
		{name: "non-canonical signature base64", token: nonCanonical, want: ErrMalformedToken},
		{name: "no alg", token: handmade(`{"typ":"JWT"}`, payload(t, claims()), parts[2]), want: ErrMalformedToken, wantMsg: "no alg"},
		{name: "alg not a string", token: handmade(`{"alg":256}`, payload(t, claims()), parts[2]), want: ErrMalformedToken, wantMsg: "no alg"},

		{name: "alg none", token: handmade(`{"alg":"none","typ":"JWT"}`, payload(t, claims()), ""), want: ErrAlgorithm, wantMsg: `"none"`},
		{name: "alg none with HS256 signature", token: handmade(`{"alg":"none","typ":"JWT"}`, payload(t, claims()), parts[2]), want: ErrAlgorithm},
		{name: "alg None", token: handmade(`{"alg":"None","typ":"JWT"}`, payload(t, claims()), ""), want: ErrAlgorithm, wantMsg: `"None"`},
		{name: "alg hs256 lowercase", token: handmade(`{"alg":"hs256","typ":"JWT"}`, payload(t, claims()), parts[2]), want: ErrAlgorithm},
		{name: "alg empty", token: handmade(`{"alg":""}`, payload(t, claims()), parts[2]), want: ErrAlgorithm},
		{name: "HS384", token: sign(t, jwt.SigningMethodHS384, testSecret, claims()), want: ErrAlgorithm, wantMsg: `"HS384" (this server accepts HS256)`},
		{name: "HS512", token: sign(t, jwt.SigningMethodHS512, testSecret, claims()), want: ErrAlgorithm, wantMsg: `"HS512"`},
		{name: "RS256", token: sign(t, jwt.SigningMethodRS256, rsaKey, claims()), want: ErrAlgorithm, wantMsg: `"RS256"`},
		{name: "RS256 header over HS256 signature", token: handmade(`{"alg":"RS256","typ":"JWT"}`, payload(t, claims()), parts[2]), want: ErrAlgorithm},
		{name: "long alg truncated", token: handmade(`{"alg":"`+strings.Repeat("X", 500)+`"}`, payload(t, claims()), ""), want: ErrAlgorithm, wantMsg: `XXX"...`},

		{name: "wrong key", token: sign(t, jwt.SigningMethodHS256, otherSecret, claims()), want: ErrSignature},
		{name: "tampered claims", token: handmade(`{"alg":"HS256","typ":"JWT"}`, payload(t, claims("sub", "mallory")), parts[2]), want: ErrSignature},
		{name: "empty signature", token: parts[0] + "." + parts[1] + ".", want: ErrSignature},
		{name: "expired and wrong key", token: sign(t, jwt.SigningMethodHS256, otherSecret, claims("exp", testNow.Add(-time.Hour).Unix())), want: ErrSignature},

		{name: "expired", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("exp", testNow.Add(-time.Hour).Unix())), want: ErrExpired, wantMsg: "token expired at 2026-11-25T09:00:00Z"},
		{name: "expired beyond leeway", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("exp", testNow.Add(-6*time.Second).Unix())), want: ErrExpired},
		{name: "not yet valid", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("nbf", testNow.Add(time.Minute).Unix())), want: ErrNotYetValid, wantMsg: "valid from 2026-11-25T10:01:00Z"},
		{name: "issued in the future", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("iat", testNow.Add(time.Minute).Unix())), want: ErrNotYetValid, wantMsg: "issued in the future"},
		{name: "nbf not a number", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("nbf", "soon")), want: ErrMalformedToken, wantMsg: "nbf"},
		{name: "missing exp", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("exp", nil)), want: ErrMissingExpiry},
		{name: "zero exp", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("exp", 0)), want: ErrMissingExpiry},
		{name: "exp not a number", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("exp", "tomorrow")), want: ErrMissingExpiry, wantMsg: "not a number"},
		{name: "missing sub", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("sub", nil)), want: ErrMissingSubject},
		{name: "empty sub", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("sub", "")), want: ErrMissingSubject},
		{name: "sub not a string", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("sub", 42)), want: ErrMissingSubject},

		{name: "audience matches", opts: HS256Options{Audience: "dalv"}, token: sign(t, jwt.SigningMethodHS256, testSecret, claims("aud", "dalv"))},
		{name: "audience in array", opts: HS256Options{Audience: "dalv"}, token: sign(t, jwt.SigningMethodHS256, testSecret, claims("aud", []string{"web", "dalv"}))},
		{name: "audience wrong", opts: HS256Options{Audience: "dalv"}, token: sign(t, jwt.SigningMethodHS256, testSecret, claims("aud", "web")), want: ErrAudience, wantMsg: `want "dalv", token is for "web"`},
		{name: "audience missing", opts: HS256Options{Audience: "dalv"}, token: valid, want: ErrAudience, wantMsg: "no aud"},
		{name: "audience not strings", opts: HS256Options{Audience: "dalv"}, token: sign(t, jwt.SigningMethodHS256, testSecret, claims("aud", []any{1, 2})), want: ErrAudience},
		{name: "audience not configured", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("aud", "web"))},
		{name: "issuer matches", opts: HS256Options{Issuer: "https://id.example"}, token: sign(t, jwt.SigningMethodHS256, testSecret, claims("iss", "https://id.example"))},
		{name: "issuer wrong", opts: HS256Options{Issuer: "https://id.example"}, token: sign(t, jwt.SigningMethodHS256, testSecret, claims("iss", "https://evil.example")), want: ErrIssuer, wantMsg: `token is from "https://evil.example"`},
		{name: "issuer missing", opts: HS256Options{Issuer: "https://id.example"}, token: valid, want: ErrIssuer, wantMsg: "no iss"},
		{name: "issuer not configured", token: sign(t, jwt.SigningMethodHS256, testSecret, claims("iss", "anyone"))},
		{name: "expired beats wrong audience", opts: HS256Options{Audience: "dalv"}, token: sign(t, jwt.SigningMethodHS256, testSecret, claims("exp", testNow.Add(-time.Hour).Unix())), want: ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVerifier(t, tt.opts)
			c, err := v.Verify(context.Background(), tt.token)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify() error = %v, want nil", err)
				}
				if c == nil || c.Subject == "" {
					t.Fatalf("Verify() = %+v, want claims with a subject", c)
				}
				return
			}
			if c != nil {
				t.Errorf("Verify() claims = %+v, want nil", c)
			}
			if got, want := matching(err), []error{tt.want}; len(got) != 1 || got[0] != want[0] {
				t.Fatalf("Verify() error = %v, matches %v, want exactly %v", err, got, want)
			}
			for _, jerr := range []error{jwt.ErrTokenMalformed, jwt.ErrTokenSignatureInvalid, jwt.ErrTokenInvalidClaims, jwt.ErrTokenUnverifiable} {
				if errors.Is(err, jerr) {
					t.Errorf("Verify() error = %v also matches golang-jwt's %v", err, jerr)
				}
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Verify() error = %q, want it to contain %q", err, tt.wantMsg)
			}
			if sig := tt.token[strings.LastIndexByte(tt.token, '.')+1:]; len(sig) > 8 && strings.Contains(err.Error(), sig) {
				t.Errorf("Verify() error = %q contains the token's signature", err)
			}
		})
	}
}

func TestVerifyClaims(t *testing.T) {
	v := newVerifier(t, HS256Options{})
	token := sign(t, jwt.SigningMethodHS256, testSecret, claims("tenant", "acme"))
	c, err := v.Verify(context.Background(), token)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Subject, "alice"; got != want {
		t.Errorf("Subject = %q, want %q", got, want)
	}
	if got, want := c.ExpiresAt, testNow.Add(time.Hour); !got.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v", got, want)
	}
	if got, want := c.Raw["tenant"], "acme"; got != want {
		t.Errorf("Raw[tenant] = %v, want %v", got, want)
	}
}

func TestLeeway(t *testing.T) {
	exp := testNow
	token := sign(t, jwt.SigningMethodHS256, testSecret, claims("exp", exp.Unix(), "iat", exp.Add(-time.Hour).Unix()))
	tests := []struct {
		name   string
		leeway time.Duration
		now    time.Time
		want   error
	}{
		{"none, a second before exp", -1, exp.Add(-time.Second), nil},
		{"none, at exp", -1, exp, ErrExpired},
		{"default, just inside", 0, exp.Add(DefaultLeeway - time.Second), nil},
		{"default, at the edge", 0, exp.Add(DefaultLeeway), ErrExpired},
		{"custom, inside", time.Minute, exp.Add(59 * time.Second), nil},
		{"custom, outside", time.Minute, exp.Add(time.Minute), ErrExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVerifier(t, HS256Options{Leeway: tt.leeway, Now: at(tt.now)})
			if _, err := v.Verify(context.Background(), token); !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("Verify() error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestNewHS256(t *testing.T) {
	tests := []struct {
		name   string
		secret []byte
		want   error
	}{
		{"nil", nil, ErrWeakKey},
		{"31 bytes", make([]byte, 31), ErrWeakKey},
		{"32 bytes", make([]byte, 32), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewHS256(tt.secret, HS256Options{})
			if got, want := err, tt.want; !errors.Is(got, want) || (want == nil && got != nil) {
				t.Fatalf("NewHS256() error = %v, want %v", got, want)
			}
			if err != nil && !strings.Contains(err.Error(), "need at least 32") {
				t.Errorf("NewHS256() error = %q, want it to say the minimum", err)
			}
		})
	}
}

func TestNewHS256CopiesSecret(t *testing.T) {
	secret := append([]byte(nil), testSecret...)
	v, err := NewHS256(secret, HS256Options{Now: at(testNow)})
	if err != nil {
		t.Fatal(err)
	}
	secret[0] ^= 0xff
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, testSecret, claims())); err != nil {
		t.Fatalf("Verify() after caller changed its slice: %v", err)
	}
}

func TestVerifyConcurrent(t *testing.T) {
	v := newVerifier(t, HS256Options{Audience: "dalv"})
	good := sign(t, jwt.SigningMethodHS256, testSecret, claims("aud", "dalv"))
	bad := sign(t, jwt.SigningMethodHS256, otherSecret, claims("aud", "dalv"))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if _, err := v.Verify(context.Background(), good); err != nil {
					t.Errorf("Verify(good) = %v", err)
				}
				if _, err := v.Verify(context.Background(), bad); !errors.Is(err, ErrSignature) {
					t.Errorf("Verify(bad) = %v, want ErrSignature", err)
				}
			}
		})
	}
	wg.Wait()
}

func TestMint(t *testing.T) {
	token, err := Mint(testSecret, "alice", time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	c, err := newVerifier(t, HS256Options{}).Verify(context.Background(), token)
	if err != nil {
		t.Fatalf("Verify(Mint()) = %v", err)
	}
	if got, want := c.Subject, "alice"; got != want {
		t.Errorf("Subject = %q, want %q", got, want)
	}
	if got, want := c.ExpiresAt, testNow.Add(time.Hour); !got.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v", got, want)
	}
	if got, want := c.Raw["iat"], float64(testNow.Unix()); got != want {
		t.Errorf("iat = %v, want %v", got, want)
	}
	// An hour and a leeway later it has expired.
	later := newVerifier(t, HS256Options{Now: at(testNow.Add(time.Hour + DefaultLeeway))})
	if _, err := later.Verify(context.Background(), token); !errors.Is(err, ErrExpired) {
		t.Errorf("Verify() after ttl = %v, want ErrExpired", err)
	}
}

func TestMintRefuses(t *testing.T) {
	tests := []struct {
		name    string
		secret  []byte
		subject string
		ttl     time.Duration
		want    error // nil: any error
	}{
		{"short secret", []byte("short"), "alice", time.Hour, ErrWeakKey},
		{"empty subject", testSecret, "", time.Hour, ErrMissingSubject},
		{"subject with a newline", testSecret, "alice\nbob", time.Hour, ErrUserID},
		{"zero ttl", testSecret, "alice", 0, nil},
		{"negative ttl", testSecret, "alice", -time.Hour, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, err := Mint(tt.secret, tt.subject, tt.ttl, testNow)
			if err == nil {
				t.Fatalf("Mint() = %q, want an error", token)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Mint() error = %v, want %v", err, tt.want)
			}
		})
	}
}

// FuzzVerify checks that Verify never panics, refuses with one of the
// package's sentinels, and accepts only HS256 tokens whose signature was made
// with the secret and whose claims are valid at the verifier's clock.
func FuzzVerify(f *testing.F) {
	valid := sign(f, jwt.SigningMethodHS256, testSecret, claims())
	parts := strings.Split(valid, ".")
	for _, seed := range []string{
		valid,
		sign(f, jwt.SigningMethodHS256, testSecret, claims("aud", []string{"dalv", "x"}, "iss", "id", "nbf", testNow.Unix())),
		sign(f, jwt.SigningMethodHS256, otherSecret, claims()),
		sign(f, jwt.SigningMethodHS384, testSecret, claims()),
		sign(f, jwt.SigningMethodHS256, testSecret, claims("exp", nil)),
		handmade(`{"alg":"none","typ":"JWT"}`, payload(f, claims()), ""),
		handmade(`{"alg":"HS256"}`, `{"sub":"x","exp":1e400}`, parts[2]),
		parts[0] + "." + parts[1] + ".",
		"", ".", "..", "a.b.c", "not a token",
	} {
		f.Add(seed)
	}
	for _, tc := range identityCases {
		f.Add(identityToken(f, tc.header, `"aud":"dalv",`+tc.claims))
	}
	v := newVerifier(f, HS256Options{Audience: "dalv"})
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(context.Background(), token)
		if err != nil {
			if c != nil {
				t.Fatalf("Verify() returned claims %+v with error %v", c, err)
			}
			if got := matching(err); len(got) != 1 {
				t.Fatalf("Verify() error = %v matches sentinels %v, want exactly one", err, got)
			}
			return
		}
		p := strings.Split(token, ".")
		if len(p) != 3 {
			t.Fatalf("accepted a token of %d segments", len(p))
		}
		header, err := base64.RawURLEncoding.DecodeString(p[0])
		if err != nil {
			t.Fatalf("accepted a token with header %q: %v", p[0], err)
		}
		var h struct{ Alg string }
		if err := json.Unmarshal(header, &h); err != nil || h.Alg != "HS256" {
			t.Fatalf("accepted a token with header %s", header)
		}
		sig, err := base64.RawURLEncoding.Strict().DecodeString(p[2])
		if err != nil {
			t.Fatalf("accepted a token with signature %q: %v", p[2], err)
		}
		mac := hmac.New(sha256.New, testSecret)
		mac.Write([]byte(p[0] + "." + p[1]))
		if !hmac.Equal(sig, mac.Sum(nil)) {
			t.Fatalf("accepted a token not signed with the secret: %q", token)
		}
		if c.Subject == "" || !c.ExpiresAt.Add(DefaultLeeway).After(testNow) || !c.Has("aud", "dalv") {
			t.Fatalf("accepted claims %+v", c)
		}
		claims, _ := base64.RawURLEncoding.DecodeString(p[1])
		if _, _, lone := loneSurrogate(claims); lone || !utf8.Valid(claims) || !utf8.Valid(header) {
			t.Fatalf("accepted a token whose JSON is not valid UTF-8: %q %q", header, claims)
		}
		if strings.ContainsFunc(c.Subject, unicode.IsControl) || len(c.Subject) > 256 {
			t.Fatalf("accepted the user id %q", c.Subject)
		}
	})
}
