package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/dalvdb/dalv/internal/wait"
)

const (
	testAud = "authenticated"
	testIss = "https://project.example/auth/v1"
)

// testKeys are generated once: RSA generation is slow under -race.
var testKeys = sync.OnceValue(func() map[string]crypto.Signer {
	keys := map[string]crypto.Signer{}
	var err error
	if keys["rsa"], err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if keys["rsa2"], err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	for name, c := range map[string]elliptic.Curve{"p256": elliptic.P256(), "p256b": elliptic.P256(), "p384": elliptic.P384(), "p521": elliptic.P521()} {
		if keys[name], err = ecdsa.GenerateKey(c, rand.Reader); err != nil {
			panic(err)
		}
	}
	if _, keys["ed25519"], err = ed25519.GenerateKey(rand.Reader); err != nil {
		panic(err)
	}
	return keys
})

func testKey(name string) crypto.Signer { return testKeys()[name] }

// algKey is the key each algorithm is tested with.
var algKey = map[string]string{
	"RS256": "rsa", "RS384": "rsa", "RS512": "rsa", "PS256": "rsa", "PS384": "rsa", "PS512": "rsa",
	"ES256": "p256", "ES384": "p384", "ES512": "p521", "EdDSA": "ed25519",
}

// jwk renders key's public half as a JWK with the given metadata.
func jwk(tb testing.TB, key crypto.Signer, kid, alg, use string) json.RawMessage {
	tb.Helper()
	j, err := jwkset.NewJWKFromKey(key.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.ALG(alg), USE: jwkset.USE(use)}})
	if err != nil {
		tb.Fatal(err)
	}
	b, err := json.Marshal(j.Marshal())
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// jwksServer serves a JWKS that tests change, and counts its requests.
type jwksServer struct {
	*httptest.Server
	requests     atomic.Int64
	mu           sync.Mutex
	body         string
	status       int
	cacheControl string
}

func newJWKSServer(tb testing.TB, keys ...json.RawMessage) *jwksServer {
	s := &jwksServer{status: http.StatusOK}
	s.set(keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		body, status, cc := s.body, s.status, s.cacheControl
		s.mu.Unlock()
		if cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	tb.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(keys ...json.RawMessage) {
	if keys == nil {
		keys = []json.RawMessage{}
	}
	b, _ := json.Marshal(map[string]any{"keys": keys})
	s.setBody(http.StatusOK, string(b))
}

func (s *jwksServer) setCacheControl(cc string) {
	s.mu.Lock()
	s.cacheControl = cc
	s.mu.Unlock()
}

func (s *jwksServer) setBody(status int, body string) {
	s.mu.Lock()
	s.status, s.body = status, body
	s.mu.Unlock()
}

// pkOptions are options for a verifier of testAud/testIss tokens at
// testNow, with intervals short enough for tests.
func pkOptions(urls ...string) PublicKeyOptions {
	return PublicKeyOptions{
		JWKSURLs: urls, Audience: testAud, Issuer: testIss, Now: at(testNow),
		UnknownKIDInterval: time.Hour, JWKSTimeout: 5 * time.Second,
	}
}

func newPK(tb testing.TB, opts PublicKeyOptions) Verifier {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	v, err := NewPublicKey(ctx, opts)
	if err != nil {
		tb.Fatalf("NewPublicKey: %v", err)
	}
	return v
}

// pkClaims are valid claims for pkOptions' verifiers.
func pkClaims(kv ...any) jwt.MapClaims {
	return claims(append([]any{"aud", testAud, "iss", testIss}, kv...)...)
}

// signKID signs c with key under alg, with kid in the header when not "".
func signKID(tb testing.TB, alg string, key crypto.Signer, kid string, c jwt.MapClaims) string {
	tb.Helper()
	t := jwt.NewWithClaims(jwt.GetSigningMethod(alg), c)
	if kid != "" {
		t.Header["kid"] = kid
	}
	s, err := t.SignedString(key)
	if err != nil {
		tb.Fatalf("sign %s: %v", alg, err)
	}
	return s
}

func wantRefused(t *testing.T, v Verifier, token string, want error, msg string) {
	t.Helper()
	c, err := v.Verify(context.Background(), token)
	if c != nil {
		t.Fatalf("Verify() = %+v, want refused", c)
	}
	if got := matching(err); len(got) != 1 || got[0] != want {
		t.Fatalf("Verify() error = %v, matches %v, want exactly %v", err, got, want)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("Verify() error = %q, want it to contain %q", err, msg)
	}
}

func wantAccepted(t *testing.T, v Verifier, token, user string) {
	t.Helper()
	c, err := v.Verify(context.Background(), token)
	if err != nil {
		t.Fatalf("Verify() error = %v", err)
	}
	if c.Subject != user {
		t.Fatalf("Subject = %q, want %q", c.Subject, user)
	}
}

func pemOf(tb testing.TB, typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func publicPEM(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		tb.Fatal(err)
	}
	return pemOf(tb, "PUBLIC KEY", der)
}

func certPEM(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "issuer"}, NotBefore: testNow.Add(-time.Hour), NotAfter: testNow.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	return pemOf(tb, "CERTIFICATE", der)
}

func TestPublicKeyAlgorithmsFromJWKS(t *testing.T) {
	t.Parallel()
	var keys []json.RawMessage
	for _, name := range []string{"rsa", "p256", "p384", "p521", "ed25519"} {
		keys = append(keys, jwk(t, testKey(name), "kid-"+name, "", "sig"))
	}
	srv := newJWKSServer(t, keys...)
	v := newPK(t, pkOptions(srv.URL))
	for _, alg := range PublicKeyAlgs {
		t.Run(alg, func(t *testing.T) {
			wantAccepted(t, v, signKID(t, alg, testKey(algKey[alg]), "kid-"+algKey[alg], pkClaims("sub", "u-"+alg)), "u-"+alg)
		})
	}
	if got, want := srv.requests.Load(), int64(1); got != want {
		t.Errorf("JWKS requests = %d, want %d", got, want)
	}
}

func TestPublicKeyAlgorithmsFromPEM(t *testing.T) {
	t.Parallel()
	var files []PEMFile
	for _, name := range []string{"rsa", "p256", "p384"} {
		files = append(files, PEMFile{Name: name + ".pem", Data: publicPEM(t, testKey(name))})
	}
	for _, name := range []string{"p521", "ed25519"} {
		files = append(files, PEMFile{Name: name + ".crt", Data: certPEM(t, testKey(name))})
	}
	rsaPub := testKey("rsa").Public().(*rsa.PublicKey)
	files = append(files, PEMFile{Name: "pkcs1.pem", Data: pemOf(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(rsaPub))})
	opts := pkOptions()
	opts.PEM = files
	v := newPK(t, opts)
	for _, alg := range PublicKeyAlgs {
		t.Run(alg, func(t *testing.T) {
			wantAccepted(t, v, signKID(t, alg, testKey(algKey[alg]), "", pkClaims()), "alice")
			// A kid that no JWKS publishes still finds the PEM key.
			wantAccepted(t, v, signKID(t, alg, testKey(algKey[alg]), "some-kid", pkClaims()), "alice")
		})
	}
	wantRefused(t, v, signKID(t, "RS256", testKey("rsa2"), "", pkClaims()), ErrSignature, "not signed")
}

// esSignature returns token with its ES256 signature replaced by sig(r, s).
func esResign(token string, sig []byte) string {
	return token[:strings.LastIndexByte(token, '.')+1] + base64.RawURLEncoding.EncodeToString(sig)
}

func TestPublicKeyRefusals(t *testing.T) {
	t.Parallel()
	attacker := newJWKSServer(t, jwk(t, testKey("rsa2"), "evil", "RS256", "sig"))
	srv := newJWKSServer(t,
		jwk(t, testKey("rsa"), "rsa", "", "sig"),
		jwk(t, testKey("p256"), "ec", "ES256", "sig"),
		jwk(t, testKey("ed25519"), "ed", "", ""),
		jwk(t, testKey("p256b"), "enc-key", "", "enc"),
	)
	opts := pkOptions(srv.URL)
	pk := newPK(t, opts)
	hs := newVerifier(t, HS256Options{Audience: testAud, Issuer: testIss})
	both := ByAlgorithm(hs, pk)
	rsaPEM := publicPEM(t, testKey("rsa"))

	good := signKID(t, "ES256", testKey("p256"), "ec", pkClaims())
	parts := strings.Split(good, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	n := elliptic.P256().Params().N
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	fixed := func(r, s *big.Int) []byte {
		b := make([]byte, 64)
		r.FillBytes(b[:32])
		s.FillBytes(b[32:])
		return b
	}
	der := append([]byte{0x30, 0x44, 0x02, 0x20}, sig[:32]...)
	der = append(append(der, 0x02, 0x20), sig[32:]...)

	headerWith := func(extra string) string {
		// A token whose header names a key of its own; signed by the
		// attacker's key, which the attacker's JWKS would serve.
		h := `{"alg":"RS256","kid":"evil",` + extra + `}`
		signing := base64.RawURLEncoding.EncodeToString([]byte(h)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload(t, pkClaims())))
		sig, err := jwt.SigningMethodRS256.Sign(signing, testKey("rsa2"))
		if err != nil {
			t.Fatal(err)
		}
		return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
	}

	tests := []struct {
		name  string
		v     Verifier
		token string
		want  error
		msg   string
	}{
		{"alg confusion: HS256 keyed with the RSA public key, public keys only", pk, sign(t, jwt.SigningMethodHS256, rsaPEM, pkClaims()), ErrAlgorithm, `"HS256" (this server accepts RS256, RS384`},
		{"alg confusion: HS256 keyed with the RSA public key, both kinds on", both, sign(t, jwt.SigningMethodHS256, rsaPEM, pkClaims()), ErrSignature, "not signed"},
		{"alg confusion: HS256 with the RSA key's kid", both, func() string {
			tk := jwt.NewWithClaims(jwt.SigningMethodHS256, pkClaims())
			tk.Header["kid"] = "rsa"
			s, _ := tk.SignedString(rsaPEM)
			return s
		}(), ErrSignature, "not signed"},
		{"garbage, both kinds on", both, "not.a.token", ErrMalformedToken, "base64"},
		{"header without alg, both kinds on", both, handmade(`{"kid":"rsa"}`, payload(t, pkClaims()), parts[2]), ErrMalformedToken, "no alg"},
		{"two parts, both kinds on", both, parts[0] + "." + parts[1], ErrMalformedToken, "this has 2"},
		{"alg none", pk, handmade(`{"alg":"none","kid":"rsa"}`, payload(t, pkClaims()), ""), ErrAlgorithm, `"none"`},
		{"alg none, both kinds on", both, handmade(`{"alg":"none","kid":"rsa"}`, payload(t, pkClaims()), ""), ErrAlgorithm, `(this server accepts HS256, RS256`},
		{"RS256 header with an EC key's kid", pk, handmade(`{"alg":"RS256","kid":"ec"}`, payload(t, pkClaims()), parts[2]), ErrAlgorithm, "for ES256 only"},
		{"ES256 header with an RSA key's kid (no alg in its JWK)", pk, handmade(`{"alg":"ES256","kid":"rsa"}`, payload(t, pkClaims()), parts[2]), ErrAlgorithm, "is a RSA key"},
		{"ES384 header with a P-256 key's kid", pk, handmade(`{"alg":"ES384","kid":"ec"}`, payload(t, pkClaims()), parts[2]), ErrAlgorithm, `for ES256 only`},
		{"RS256 with an Ed25519 key's kid", pk, signKID(t, "RS256", testKey("rsa"), "ed", pkClaims()), ErrAlgorithm, "for EdDSA only"},
		{"ES256 signature DER-encoded", pk, esResign(good, der), ErrSignature, "not signed"},
		{"ES256 signature one byte short", pk, esResign(good, sig[:63]), ErrSignature, "not signed"},
		{"ES256 r of zero", pk, esResign(good, fixed(big.NewInt(0), s)), ErrSignature, "not signed"},
		{"ES256 s equal to the order", pk, esResign(good, fixed(r, n)), ErrSignature, "not signed"},
		{"ES256 r equal to the order", pk, esResign(good, fixed(n, s)), ErrSignature, "not signed"},
		{"ES256 s of all ones", pk, esResign(good, fixed(r, new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 256), big.NewInt(1)))), ErrSignature, "not signed"},
		{"kid with a path", pk, signKID(t, "RS256", testKey("rsa"), "../../../../dev/null", pkClaims()), ErrUnknownKey, "path or URL"},
		{"kid that is a URL", pk, signKID(t, "RS256", testKey("rsa"), "https://evil.example/key", pkClaims()), ErrUnknownKey, "path or URL"},
		{"kid with a query", pk, signKID(t, "RS256", testKey("rsa"), "rsa?x=1", pkClaims()), ErrUnknownKey, `'?'`},
		{"kid with a NUL", pk, signKID(t, "RS256", testKey("rsa"), "rsa\x00", pkClaims()), ErrUnknownKey, "kid"},
		{"kid not a string", pk, handmade(`{"alg":"RS256","kid":7}`, payload(t, pkClaims()), parts[2]), ErrMalformedToken, "kid is not a string"},
		{"jku header", pk, headerWith(`"jku":"` + attacker.URL + `"`), ErrUnknownKey, "jku"},
		{"x5u header", pk, headerWith(`"x5u":"` + attacker.URL + `"`), ErrUnknownKey, "x5u"},
		{"jwk header", pk, headerWith(`"jwk":` + string(jwk(t, testKey("rsa2"), "evil", "RS256", "sig"))), ErrUnknownKey, "jwk"},
		{"x5c header", pk, headerWith(`"x5c":["` + base64.StdEncoding.EncodeToString(pemBlockBytes(certPEM(t, testKey("rsa2")))) + `"]`), ErrUnknownKey, "x5c"},
		{"unknown kid", pk, signKID(t, "RS256", testKey("rsa2"), "evil", pkClaims()), ErrUnknownKey, `kid "evil" (known: "rsa", "ec", "ed")`},
		{"encryption key", pk, signKID(t, "ES256", testKey("p256b"), "enc-key", pkClaims()), ErrUnknownKey, `"enc-key"`},
		{"known kid, another key", pk, signKID(t, "RS256", testKey("rsa2"), "rsa", pkClaims()), ErrSignature, "not signed"},
		{"no kid, no key fits", pk, signKID(t, "RS256", testKey("rsa2"), "", pkClaims()), ErrSignature, "not signed"},
		{"wrong aud", pk, signKID(t, "RS256", testKey("rsa"), "rsa", pkClaims("aud", "other-app")), ErrAudience, `want "authenticated", token is for "other-app"`},
		{"no aud", pk, signKID(t, "RS256", testKey("rsa"), "rsa", pkClaims("aud", nil)), ErrAudience, "no aud"},
		{"wrong iss", pk, signKID(t, "RS256", testKey("rsa"), "rsa", pkClaims("iss", "https://evil.example")), ErrIssuer, `token is from "https://evil.example"`},
		{"missing user claim", pk, signKID(t, "RS256", testKey("rsa"), "rsa", pkClaims("sub", nil)), ErrMissingSubject, "missing"},
		{"user claim not a string", pk, signKID(t, "RS256", testKey("rsa"), "rsa", pkClaims("sub", 42)), ErrMissingSubject, "not a string"},
		{"user claim an array", pk, signKID(t, "RS256", testKey("rsa"), "rsa", pkClaims("sub", []string{"a"})), ErrMissingSubject, "not a string"},
		{"expired", pk, signKID(t, "EdDSA", testKey("ed25519"), "ed", pkClaims("exp", testNow.Add(-time.Hour).Unix())), ErrExpired, "expired"},
		{"duplicate sub", pk, func() string {
			h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256","kid":"rsa"}`))
			p := base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"a","sub":"b","aud":"authenticated","iss":"https://project.example/auth/v1","exp":` + fmt.Sprint(testNow.Add(time.Hour).Unix()) + `}`))
			sig, _ := jwt.SigningMethodRS256.Sign(h+"."+p, testKey("rsa"))
			return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(sig)
		}(), ErrDuplicateClaim, `"sub"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantRefused(t, tt.v, tt.token, tt.want, tt.msg)
		})
	}
	if got := attacker.requests.Load(); got != 0 {
		t.Errorf("the attacker's JWKS got %d requests, want none", got)
	}

	// High-S ECDSA signatures (s replaced by n-s) verify under Go's
	// crypto/ecdsa, as under the standard: signers do not normalise s, so
	// refusing them would refuse half of a provider's tokens. The token
	// string differs, the claims are the same.
	t.Run("ES256 high-S accepted", func(t *testing.T) {
		wantAccepted(t, pk, esResign(good, fixed(r, new(big.Int).Sub(n, s))), "alice")
	})
	t.Run("HS256 still works with both kinds on", func(t *testing.T) {
		wantAccepted(t, both, sign(t, jwt.SigningMethodHS256, testSecret, pkClaims()), "alice")
		wantAccepted(t, both, signKID(t, "PS512", testKey("rsa"), "rsa", pkClaims()), "alice")
	})
}

func pemBlockBytes(b []byte) []byte {
	block, _ := pem.Decode(b)
	return block.Bytes
}

func TestPublicKeyUserClaim(t *testing.T) {
	t.Parallel()
	srv := newJWKSServer(t, jwk(t, testKey("p256"), "ec", "", ""))
	opts := pkOptions(srv.URL)
	opts.UserClaim = "user_id"
	v := newPK(t, opts)
	wantAccepted(t, v, signKID(t, "ES256", testKey("p256"), "ec", pkClaims("user_id", "firebase-uid")), "firebase-uid")
	wantRefused(t, v, signKID(t, "ES256", testKey("p256"), "ec", pkClaims()), ErrMissingSubject, `user claim "user_id" is missing`)
	wantRefused(t, v, signKID(t, "ES256", testKey("p256"), "ec", pkClaims("user_id", true)), ErrMissingSubject, "not a string")
	wantRefused(t, v, signKID(t, "ES256", testKey("p256"), "ec", pkClaims("user_id", "a\nb")), ErrUserID, "control character")
}

// TestJWKSRotation publishes a new key and removes the old one: tokens of
// the new key are accepted at once, without a restart, and tokens of the
// old one are refused from then on.
func TestJWKSRotation(t *testing.T) {
	t.Parallel()
	srv := newJWKSServer(t, jwk(t, testKey("rsa"), "2026-01", "RS256", "sig"))
	opts := pkOptions(srv.URL)
	opts.UnknownKIDInterval = time.Millisecond
	v := newPK(t, opts)
	old := func() string { return signKID(t, "RS256", testKey("rsa"), "2026-01", pkClaims()) }
	wantAccepted(t, v, old(), "alice")

	srv.set(jwk(t, testKey("rsa2"), "2026-02", "RS256", "sig"))
	wantAccepted(t, v, signKID(t, "RS256", testKey("rsa2"), "2026-02", pkClaims()), "alice")
	if got, want := srv.requests.Load(), int64(2); got != want {
		t.Errorf("JWKS requests = %d, want %d (start, then the new kid)", got, want)
	}
	wantRefused(t, v, old(), ErrUnknownKey, `"2026-01"`)
}

// TestJWKSBackgroundRefresh checks that the set is fetched again when its
// max-age runs out, so a removed key stops working with no token asking.
func TestJWKSBackgroundRefresh(t *testing.T) {
	t.Parallel()
	srv := newJWKSServer(t, jwk(t, testKey("ed25519"), "a", "", ""))
	srv.setCacheControl("public, max-age=0, must-revalidate")
	opts := pkOptions(srv.URL)
	opts.JWKSMinRefresh = 20 * time.Millisecond
	v := newPK(t, opts)
	wantAccepted(t, v, signKID(t, "EdDSA", testKey("ed25519"), "a", pkClaims()), "alice")
	srv.set(jwk(t, testKey("p256"), "b", "", ""))
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := v.Verify(context.Background(), signKID(t, "EdDSA", testKey("ed25519"), "a", pkClaims()))
		if errors.Is(err, ErrUnknownKey) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the removed key still verifies after 10s: %v (%d requests)", err, srv.requests.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	wantAccepted(t, v, signKID(t, "ES256", testKey("p256"), "b", pkClaims()), "alice")
}

func TestJWKSCacheControl(t *testing.T) {
	s := &jwksSource{opts: PublicKeyOptions{JWKSRefresh: time.Hour, JWKSMinRefresh: time.Minute, JWKSMaxRefresh: 24 * time.Hour}}
	for _, tt := range []struct {
		header string
		want   time.Duration
	}{
		{"", time.Hour},
		{"public, max-age=21600", 6 * time.Hour},
		{"max-age=5", time.Minute},
		{"max-age=31536000, immutable", 24 * time.Hour},
		{"no-cache", time.Hour},
		{"max-age=junk", time.Hour},
		{`MAX-AGE="120"`, 2 * time.Minute},
		{"max-age=99999999999999999", 24 * time.Hour},
	} {
		h := http.Header{}
		if tt.header != "" {
			h.Set("Cache-Control", tt.header)
		}
		if got := s.refreshAfter(h); got != tt.want {
			t.Errorf("refreshAfter(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}

// TestJWKSUnknownKIDFlood sends many tokens naming unknown kids at once:
// the JWKS server sees at most one more request per UnknownKIDInterval.
func TestJWKSUnknownKIDFlood(t *testing.T) {
	t.Parallel()
	srv := newJWKSServer(t, jwk(t, testKey("p256"), "known", "", ""))
	v := newPK(t, pkOptions(srv.URL)) // UnknownKIDInterval: an hour
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for j := range 50 {
				tok := signKID(t, "ES256", testKey("p256b"), fmt.Sprintf("unknown-%d-%d", i, j), pkClaims())
				if _, err := v.Verify(context.Background(), tok); !errors.Is(err, ErrUnknownKey) {
					t.Errorf("Verify(unknown kid) = %v, want ErrUnknownKey", err)
				}
			}
		})
	}
	wg.Wait()
	if got, want := srv.requests.Load(), int64(2); got > want {
		t.Fatalf("JWKS requests = %d after 800 unknown kids, want at most %d (start, one refetch)", got, want)
	}
	wantAccepted(t, v, signKID(t, "ES256", testKey("p256"), "known", pkClaims()), "alice")
}

func TestJWKSDownAtStart(t *testing.T) {
	t.Parallel()
	srv := newJWKSServer(t)
	srv.setBody(http.StatusServiceUnavailable, "down")
	srv.setCacheControl("max-age=0")
	_, err := NewPublicKey(context.Background(), pkOptions(srv.URL))
	if err == nil || !strings.Contains(err.Error(), "no JWKS could be read at start") || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), srv.URL) {
		t.Fatalf("NewPublicKey(JWKS down) error = %v, want one naming the URL and the status", err)
	}

	// Optional: it starts, refuses tokens, and picks the keys up once the
	// JWKS answers.
	opts := pkOptions(srv.URL)
	opts.JWKSOptional = true
	opts.JWKSMinRefresh = 20 * time.Millisecond
	v := newPK(t, opts)
	tok := signKID(t, "ES256", testKey("p256"), "k", pkClaims())
	wantRefused(t, v, tok, ErrUnknownKey, `kid "k" (known: none)`)
	srv.set(jwk(t, testKey("p256"), "k", "", ""))
	wait.For(t, 10*time.Second, func() error {
		_, err := v.Verify(context.Background(), tok)
		return err
	})

	// Down later: the keys it has keep working.
	srv.setBody(http.StatusInternalServerError, "oops")
	before := srv.requests.Load()
	wait.For(t, 10*time.Second, func() error {
		if srv.requests.Load() < before+2 {
			return errors.New("no refresh yet")
		}
		return nil
	})
	wantAccepted(t, v, tok, "alice")
}

func TestJWKSDownLater(t *testing.T) {
	t.Parallel()
	srv := newJWKSServer(t, jwk(t, testKey("p256"), "k", "", ""))
	srv.setCacheControl("max-age=0")
	var attempts atomic.Int64
	opts := pkOptions(srv.URL)
	opts.JWKSMinRefresh = 20 * time.Millisecond
	opts.UnknownKIDInterval = time.Millisecond
	opts.Client = &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		attempts.Add(1)
		return http.DefaultTransport.RoundTrip(r)
	})}
	v := newPK(t, opts)
	srv.Close() // connection refused from now on
	tok := signKID(t, "ES256", testKey("p256"), "k", pkClaims())
	before := attempts.Load()
	wait.For(t, 10*time.Second, func() error {
		if attempts.Load() < before+3 {
			return errors.New("fewer than 3 refresh attempts")
		}
		return nil
	})
	wantAccepted(t, v, tok, "alice")
	wantRefused(t, v, signKID(t, "ES256", testKey("p256b"), "new", pkClaims()), ErrUnknownKey, `"new"`)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestJWKSBadDocuments(t *testing.T) {
	t.Parallel()
	rsaJWK := func(extra string) string {
		j := string(jwk(t, testKey("rsa"), "r", "", ""))
		return strings.TrimSuffix(j, "}") + extra + "}"
	}
	for _, tt := range []struct {
		name, body, msg string
	}{
		{"not JSON", "<html>hi</html>", "not a JSON key set"},
		{"empty set", `{"keys":[]}`, "has no usable signing key: it has none"},
		{"no keys member", `{}`, "it has none"},
		{"only an encryption key", `{"keys":[` + rsaJWK(`,"use":"enc"`) + `]}`, `use "enc"`},
		{"only an HMAC key", `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h","alg":"HS256"}]}`, `alg "HS256"`},
		{"alg that does not fit the key", `{"keys":[` + rsaJWK(`,"alg":"ES256"`) + `]}`, "does not fit its RSA key"},
		{"weak RSA key", `{"keys":[` + string(jwk(t, mustRSA1024(t), "w", "", "")) + `]}`, "1024 bits"},
		{"kid with a path", `{"keys":[` + string(jwk(t, testKey("p256"), "../k", "", "")) + `]}`, "path or URL"},
		{"bad EC point", `{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA","kid":"e"}]}`, `kid "e"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := newJWKSServer(t)
			srv.setBody(http.StatusOK, tt.body)
			_, err := NewPublicKey(context.Background(), pkOptions(srv.URL))
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("NewPublicKey() error = %v, want it to contain %q", err, tt.msg)
			}
		})
	}
	t.Run("too large", func(t *testing.T) {
		srv := newJWKSServer(t)
		srv.setBody(http.StatusOK, `{"keys":[`+strings.Repeat(" ", MaxJWKSBytes)+`]}`)
		if _, err := NewPublicKey(context.Background(), pkOptions(srv.URL)); err == nil || !strings.Contains(err.Error(), "larger than") {
			t.Fatalf("NewPublicKey() error = %v, want too large", err)
		}
	})
}

var rsa1024 = sync.OnceValues(func() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 1024) })

func mustRSA1024(t *testing.T) crypto.Signer {
	k, err := rsa1024()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestNewPublicKeyRefuses(t *testing.T) {
	t.Parallel()
	srv := newJWKSServer(t, jwk(t, testKey("p256"), "k", "", ""))
	pkcs8, err := x509.MarshalPKCS8PrivateKey(testKey("p256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		edit func(*PublicKeyOptions)
		msg  string
	}{
		{"no keys", func(o *PublicKeyOptions) { o.JWKSURLs = nil }, "need a PEM public key or a JWKS URL"},
		{"no audience", func(o *PublicKeyOptions) { o.Audience = "" }, "--jwt-audience"},
		{"no issuer", func(o *PublicKeyOptions) { o.Issuer = "" }, "--jwt-issuer"},
		{"private key as public", func(o *PublicKeyOptions) { o.PEM = []PEMFile{{"key.pem", pemOf(t, "PRIVATE KEY", pkcs8)}} }, "give the public key or certificate only"},
		{"not PEM", func(o *PublicKeyOptions) { o.PEM = []PEMFile{{"key.pem", []byte("hello")}} }, "key.pem holds no PEM"},
		{"weak RSA", func(o *PublicKeyOptions) { o.PEM = []PEMFile{{"weak.pem", publicPEM(t, mustRSA1024(t))}} }, "1024 bits"},
		{"file URL", func(o *PublicKeyOptions) { o.JWKSURLs = []string{"file:///etc/passwd"} }, "not an http(s) URL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := pkOptions(srv.URL)
			tt.edit(&o)
			if _, err := NewPublicKey(context.Background(), o); err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("NewPublicKey() error = %v, want it to contain %q", err, tt.msg)
			}
		})
	}
	t.Run("no audience allowed", func(t *testing.T) {
		o := pkOptions(srv.URL)
		o.Audience, o.Issuer, o.NoAudience = "", "", true
		v := newPK(t, o)
		wantAccepted(t, v, signKID(t, "ES256", testKey("p256"), "k", claims("aud", "anything")), "alice")
	})
}

func TestMintWithKey(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"rsa", "p256", "p384", "p521", "ed25519"} {
		t.Run(name, func(t *testing.T) {
			der, err := x509.MarshalPKCS8PrivateKey(testKey(name))
			if err != nil {
				t.Fatal(err)
			}
			key, err := ParsePrivateKeyPEM(pemOf(t, "PRIVATE KEY", der))
			if err != nil {
				t.Fatal(err)
			}
			tok, err := MintWithKey(key, MintOptions{Subject: "bob", Audience: testAud, Issuer: testIss, KID: "k1", TTL: time.Hour, Now: testNow})
			if err != nil {
				t.Fatal(err)
			}
			srv := newJWKSServer(t, jwk(t, testKey(name), "k1", "", "sig"))
			wantAccepted(t, newPK(t, pkOptions(srv.URL)), tok, "bob")
		})
	}
	if _, err := MintWithKey(testKey("p256"), MintOptions{Subject: "bob", Alg: "RS256", TTL: time.Hour, Now: testNow}); !errors.Is(err, ErrAlgorithm) {
		t.Errorf("MintWithKey(EC key, RS256) = %v, want ErrAlgorithm", err)
	}
	ec, _ := x509.MarshalECPrivateKey(testKey("p256").(*ecdsa.PrivateKey))
	if _, err := ParsePrivateKeyPEM(pemOf(t, "EC PRIVATE KEY", ec)); err != nil {
		t.Errorf("ParsePrivateKeyPEM(SEC 1) = %v", err)
	}
	if _, err := ParsePrivateKeyPEM(publicPEM(t, testKey("p256"))); err == nil {
		t.Errorf("ParsePrivateKeyPEM(public key) succeeded")
	}
}

// BenchmarkVerify compares the cost of verifying a token per request, as
// the server does (through Cached), and the cost of a first verification.
func BenchmarkVerify(b *testing.B) {
	srv := newJWKSServer(b, jwk(b, testKey("rsa"), "r", "", ""), jwk(b, testKey("p256"), "e", "", ""), jwk(b, testKey("ed25519"), "d", "", ""))
	pk := newPK(b, pkOptions(srv.URL))
	hs := newVerifier(b, HS256Options{Audience: testAud, Issuer: testIss})
	both := ByAlgorithm(hs, pk)
	for _, tc := range []struct{ alg, token string }{
		{"HS256", sign(b, jwt.SigningMethodHS256, testSecret, pkClaims())},
		{"RS256", signKID(b, "RS256", testKey("rsa"), "r", pkClaims())},
		{"ES256", signKID(b, "ES256", testKey("p256"), "e", pkClaims())},
		{"EdDSA", signKID(b, "EdDSA", testKey("ed25519"), "d", pkClaims())},
	} {
		cached := Cached(both, 0, at(testNow))
		b.Run("cached/"+tc.alg, func(b *testing.B) {
			for b.Loop() {
				if _, err := cached.Verify(context.Background(), tc.token); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("uncached/"+tc.alg, func(b *testing.B) {
			for b.Loop() {
				if _, err := both.Verify(context.Background(), tc.token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzParseJWKS feeds arbitrary documents to the JWKS parser: it never
// panics, and every key it keeps is usable and fits its alg.
func FuzzParseJWKS(f *testing.F) {
	f.Add(`{"keys":[` + string(jwk(f, testKey("p256"), "k", "ES256", "sig")) + `]}`)
	f.Add(`{"keys":[` + string(jwk(f, testKey("rsa"), "r", "", "")) + `,` + string(jwk(f, testKey("ed25519"), "d", "", "enc")) + `]}`)
	f.Add(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`)
	f.Add(`{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]}`)
	f.Add(`{"keys":null}`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, doc string) {
		keys, _, err := parseJWKS([]byte(doc), "fuzz")
		if err != nil {
			if len(keys) != 0 {
				t.Fatalf("parseJWKS() returned %d keys with error %v", len(keys), err)
			}
			return
		}
		for _, k := range keys {
			if err := usableKey(k.key); err != nil {
				t.Fatalf("kept an unusable key: %v", err)
			}
			if k.alg != "" && !keyFitsAlg(k.key, k.alg) {
				t.Fatalf("kept a %s key for %s", keyKind(k.key), k.alg)
			}
			if k.kid != "" && checkKID(k.kid) != nil {
				t.Fatalf("kept kid %q", k.kid)
			}
		}
	})
}

// FuzzVerifyPublicKey checks that the public-key verifier never panics,
// refuses with exactly one sentinel, and accepts only what a configured
// key signed.
func FuzzVerifyPublicKey(f *testing.F) {
	srv := newJWKSServer(f, jwk(f, testKey("p256"), "ec", "", ""), jwk(f, testKey("rsa"), "rsa", "", ""))
	v := newPK(f, pkOptions(srv.URL))
	for _, seed := range []string{
		signKID(f, "ES256", testKey("p256"), "ec", pkClaims()),
		signKID(f, "PS256", testKey("rsa"), "rsa", pkClaims()),
		signKID(f, "ES256", testKey("p256b"), "ec", pkClaims()),
		signKID(f, "ES256", testKey("p256"), "../x", pkClaims()),
		sign(f, jwt.SigningMethodHS256, testSecret, pkClaims()),
		handmade(`{"alg":"ES256","kid":"ec","jku":"http://x"}`, payload(f, pkClaims()), "AAAA"),
		handmade(`{"alg":"none"}`, payload(f, pkClaims()), ""),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(context.Background(), token)
		if err != nil {
			if c != nil {
				t.Fatalf("Verify() returned claims with error %v", err)
			}
			if got := matching(err); len(got) != 1 {
				t.Fatalf("Verify() error = %v matches sentinels %v, want exactly one", err, got)
			}
			return
		}
		p := strings.Split(token, ".")
		var h struct {
			Alg, Kid string
		}
		header, _ := base64.RawURLEncoding.DecodeString(p[0])
		if err := json.Unmarshal(header, &h); err != nil {
			t.Fatalf("accepted a token whose header is %q", header)
		}
		sig, _ := base64.RawURLEncoding.DecodeString(p[2])
		key := map[string]crypto.PublicKey{"ec": testKey("p256").Public(), "rsa": testKey("rsa").Public()}[h.Kid]
		if key == nil || jwt.GetSigningMethod(h.Alg).Verify(p[0]+"."+p[1], sig, key) != nil {
			t.Fatalf("accepted a token not signed by the key of kid %q: %q", h.Kid, token)
		}
	})
}
