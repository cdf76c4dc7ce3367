package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
)

var hs256 jwt.SigningMethod = jwt.SigningMethodHS256

// sign signs claims with method under the test secret.
func sign(t testing.TB, method jwt.SigningMethod, claims map[string]any) string {
	t.Helper()
	return signWith(t, method, []byte(testSecret), claims)
}

func signWith(t testing.TB, method jwt.SigningMethod, key []byte, claims map[string]any) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, jwt.MapClaims(claims)).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// unsigned builds an `alg: none` token by hand: header, claims, no signature.
func unsigned(t testing.TB, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]any{"alg": "none", "typ": "JWT"}) + "." + enc(claims) + "."
}

// withAuthorization sets the Authorization header of every request to
// value, or sends none when value is empty.
func withAuthorization(value string) connect.ClientOption {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if value != "" {
				req.Header().Set("Authorization", value)
			}
			return next(ctx, req)
		}
	}))
}

// clientWith is a device client that sends authorization as its
// Authorization header ("" for none).
func clientWith(srv *proc.Server, authorization string, opts ...connect.ClientOption) dalvv1connect.ClientServiceClient {
	return dalvv1connect.NewClientServiceClient(http.DefaultClient, srv.URL(), append([]connect.ClientOption{withAuthorization(authorization)}, opts...)...)
}

// TestDeviceTokens checks that every kind of bad device token is refused as
// unauthenticated, with a message that says what is wrong, and changes
// nothing.
func TestDeviceTokens(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	commit(t, b, "victim", opPut("name", "Victim"))

	now := time.Now()
	claims := func(edit func(map[string]any)) map[string]any {
		c := map[string]any{"sub": "victim", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
		if edit != nil {
			edit(c)
		}
		return c
	}
	good := sign(t, hs256, claims(nil))
	parts := strings.Split(good, ".")
	otherPayload := strings.Split(sign(t, hs256, claims(func(c map[string]any) { c["sub"] = "mallory" })), ".")[1]

	for _, tc := range []struct {
		name          string
		authorization string
		words         []string
	}{
		{"no Authorization header", "", []string{"missing bearer token"}},
		{"Bearer without a token", "Bearer ", []string{"missing bearer token"}},
		{"Basic scheme", "Basic dmljdGltOnNlY3JldA==", []string{"scheme", `"Basic"`, "Bearer"}},
		{"token without a scheme", good, []string{"no scheme", "Bearer"}},
		{"garbage", "Bearer garbage", []string{"malformed token", "3 dot-separated parts"}},
		{"garbage in three parts", "Bearer not.a.jwt", []string{"malformed token"}},
		{"alg none", "Bearer " + unsigned(t, claims(nil)), []string{"algorithm not allowed", `"none"`}},
		{"HS512 with the right secret", "Bearer " + sign(t, jwt.SigningMethodHS512, claims(nil)), []string{"algorithm not allowed", `"HS512"`}},
		{"HS256 under another key", "Bearer " + signWith(t, hs256, []byte("another-secret-0123456789abcdef0123456789"), claims(nil)), []string{"signature invalid"}},
		{"payload swapped", "Bearer " + parts[0] + "." + otherPayload + "." + parts[2], []string{"signature invalid"}},
		{"expired", "Bearer " + sign(t, hs256, claims(func(c map[string]any) { c["exp"] = now.Add(-time.Hour).Unix() })), []string{"expired"}},
		{"not yet valid", "Bearer " + sign(t, hs256, claims(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() })), []string{"not yet valid"}},
		{"issued in the future", "Bearer " + sign(t, hs256, claims(func(c map[string]any) { c["iat"] = now.Add(time.Hour).Unix() })), []string{"not yet valid"}},
		{"no exp", "Bearer " + sign(t, hs256, claims(func(c map[string]any) { delete(c, "exp") })), []string{"no expiry", "exp"}},
		{"exp not a number", "Bearer " + sign(t, hs256, claims(func(c map[string]any) { c["exp"] = "tomorrow" })), []string{"exp"}},
		{"no sub", "Bearer " + sign(t, hs256, claims(func(c map[string]any) { delete(c, "sub") })), []string{"no subject", "sub"}},
		{"empty sub", "Bearer " + sign(t, hs256, claims(func(c map[string]any) { c["sub"] = "" })), []string{"no subject"}},
		{"sub not a string", "Bearer " + sign(t, hs256, claims(func(c map[string]any) { c["sub"] = 42 })), []string{"sub"}},
		{"backend key", "Bearer " + testBackendKey, []string{"malformed token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := clientWith(srv, tc.authorization)
			refused(t, b, "victim", func() error {
				_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 1, Ops: ops(opPut("name", "pwned"))})
				return err
			}, connect.CodeUnauthenticated, tc.words...)
			_, err := c.GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{}))
			wantError(t, err, connect.CodeUnauthenticated, tc.words...)
		})
	}

	// The good token works, so the refusals above were the tokens' doing.
	resp := mustSync(t, clientWith(srv, "Bearer "+good), &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 1, Ops: ops(opPut("name", "Victim2"))})
	if got, want := resp.GetVersion(), uint64(2); got != want {
		t.Fatalf("sync with the good token: version %d, want %d", got, want)
	}
}

// TestDevicePartitionIsTheTokenSubject checks that a device reads and writes
// only the partition its token names.
func TestDevicePartitionIsTheTokenSubject(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	alice, bob := deviceClient(t, srv, "alice"), deviceClient(t, srv, "bob")
	mustSync(t, alice, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("secret", "alice's"))})
	resp := mustSync(t, bob, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("secret", "bob's"))})
	if got, want := render(resp.GetChanges()), []string{"secret=bob's@1"}; !slices.Equal(got, want) {
		t.Fatalf("bob's answer = %v, want %v", got, want)
	}
	wantPartition(t, b, "alice", partition{1, []string{"secret=alice's@1"}})
	wantPartition(t, b, "bob", partition{1, []string{"secret=bob's@1"}})
}

// TestBackendKeys checks that the backend API refuses a missing or wrong
// API key, and a device token, as unauthenticated, and changes nothing.
func TestBackendKeys(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	commit(t, b, "victim", opPut("name", "Victim"))

	for _, tc := range []struct {
		name          string
		authorization string
		words         []string
	}{
		{"no key", "", []string{"backend API key", "missing"}},
		{"wrong key", "Bearer e2e-backend-key-0123456780", []string{"backend API key not accepted"}},
		{"key without a scheme", testBackendKey, []string{"backend API key"}},
		{"device token", "Bearer " + token(t, "victim"), []string{"backend API key not accepted"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := dalvv1connect.NewBackendServiceClient(http.DefaultClient, srv.URL(), withAuthorization(tc.authorization))
			for _, call := range []struct {
				name string
				do   func() error
			}{
				{"Get", func() error {
					_, err := bad.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: "victim", Keys: []string{"name"}}))
					return err
				}},
				{"List", func() error {
					_, err := bad.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{User: "victim"}))
					return err
				}},
				{"Commit", func() error {
					_, err := bad.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "victim", Ops: ops(opPut("name", "pwned"))}))
					return err
				}},
				{"DeletePartition", func() error {
					_, err := bad.DeletePartition(ctx(t), connect.NewRequest(&dalvv1.DeletePartitionRequest{User: "victim"}))
					return err
				}},
			} {
				t.Run(call.name, func(t *testing.T) {
					refused(t, b, "victim", call.do, connect.CodeUnauthenticated, tc.words...)
				})
			}
		})
	}
	wantPartition(t, b, "victim", partition{1, []string{"name=Victim@1"}})
}

// signRaw signs claims given as raw JSON (exp and iat appended) with the
// test secret, so a token can carry bytes and escapes that no JSON encoder
// writes: a lone surrogate, a raw 0xff, a claim given twice.
func signRaw(t testing.TB, claims string) string {
	t.Helper()
	now := time.Now()
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	signing := enc(`{"alg":"HS256","typ":"JWT"}`) + "." + enc(fmt.Sprintf(`{%s,"iat":%d,"exp":%d}`, claims, now.Unix(), now.Add(time.Hour).Unix()))
	sig, err := hs256.Sign(signing, []byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + enc(string(sig))
}

// TestIdentityIsUnambiguous checks that a token names one user or is
// refused: subjects that a lenient JSON decoder would turn into another
// user's id (lone surrogates, invalid UTF-8, a sub given twice) and user ids
// with control characters are refused as unauthenticated, on Sync, Watch
// and GetConfig, and reach no partition.
func TestIdentityIsUnambiguous(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	// U+FFFD is what the decoder would have made of each bad subject.
	const collided = "victim\ufffd"
	commit(t, b, "victim", opPut("secret", "victim's"))
	commit(t, b, collided, opPut("secret", "collided's"))

	for _, tc := range []struct {
		name   string
		claims string
		words  []string
	}{
		{"lone high surrogate", `"sub":"victim\ud800"`, []string{"not valid UTF-8", `\ud800`}},
		{"lone high surrogate at the end of the range", `"sub":"victim\udbff"`, []string{"not valid UTF-8", `\udbff`}},
		{"lone low surrogate", `"sub":"victim\udc00"`, []string{"not valid UTF-8", `\udc00`}},
		{"raw byte 0xff", "\"sub\":\"victim\xff\"", []string{"not valid UTF-8", "0xff"}},
		{"sub given twice", `"sub":"mallory","sub":"victim"`, []string{"repeats a claim", `"sub"`}},
		{"sub given twice, once escaped", `"sub":"victim","s\u0075b":"mallory"`, []string{"repeats a claim", `"sub"`}},
		{"NUL in sub", `"sub":"victim\u0000"`, []string{"user id", "control character", "U+0000"}},
		{"newline in sub", `"sub":"victim\nadmin"`, []string{"user id", "control character", "U+000A"}},
		{"sub too long", `"sub":"` + strings.Repeat("v", 257) + `"`, []string{"user id", "257 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			authorization := "Bearer " + signRaw(t, tc.claims)
			c := clientWith(srv, authorization)
			for _, user := range []string{"victim", collided} {
				refused(t, b, user, func() error {
					_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 1, Ops: ops(opPut("secret", "pwned"))})
					return err
				}, connect.CodeUnauthenticated, tc.words...)
			}
			_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d"})
			wantError(t, err, connect.CodeUnauthenticated, tc.words...)
			_, err = c.GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{}))
			wantError(t, err, connect.CodeUnauthenticated, tc.words...)
			w := watchDeviceWith(t, http.DefaultClient, srv, authorization, &dalvv1.WatchRequest{DeviceId: "d"})
			wantError(t, w.end(t, streamWait), connect.CodeUnauthenticated, tc.words...)
		})
	}

	// Subjects that differ only where the bad ones were bad are distinct
	// users, each seeing only its own partition.
	for _, tc := range []struct{ claims, want string }{
		{`"sub":"victim"`, "secret=victim's@1"},
		{`"sub":"victim\ufffd"`, "secret=collided's@1"},
		{`"sub":"victim\ud83d\ude00"`, ""},
	} {
		resp := mustSync(t, clientWith(srv, "Bearer "+signRaw(t, tc.claims)), &dalvv1.SyncRequest{DeviceId: "d"})
		var want []string
		if tc.want != "" {
			want = []string{tc.want}
		}
		if got := render(resp.GetChanges()); !slices.Equal(got, want) {
			t.Errorf("pull with %s = %v, want %v", tc.claims, got, want)
		}
	}
	wantPartition(t, b, "victim", partition{1, []string{"secret=victim's@1"}})
	wantPartition(t, b, collided, partition{1, []string{"secret=collided's@1"}})

	// The backend API names users by the same rule.
	_, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: "victim\n", Ops: ops(opPut("secret", "pwned"))}))
	wantError(t, err, connect.CodeInvalidArgument, "control character", "U+000A")
}

// TestDeviceIDs checks that device ids with control characters, empty or
// too long are refused as invalid_argument on Sync and Watch, and change
// nothing, while printable ones of any script work.
func TestDeviceIDs(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	c := deviceClient(t, srv, "alice")
	mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "Zoé's phone 📱", Batch: 1, Ops: ops(opPut("k", "1"))})
	mustSync(t, c, &dalvv1.SyncRequest{DeviceId: strings.Repeat("d", 128), BaseVersion: 1, Batch: 1, Ops: ops(opPut("k", "2"))})

	for _, tc := range []struct {
		name, id string
		words    []string
	}{
		{"empty", "", []string{"missing deviceId"}},
		{"NUL", "phone\x00", []string{"deviceId", "control character", "U+0000"}},
		{"newline", "phone\nlaptop", []string{"deviceId", "control character", "U+000A"}},
		{"escape", "phone\x1b[2J", []string{"deviceId", "control character", "U+001B"}},
		{"C1 control", "phone\u0085", []string{"deviceId", "control character", "U+0085"}},
		{"129 bytes", strings.Repeat("d", 129), []string{"deviceId", "129 bytes", "over 128"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			refused(t, b, "alice", func() error {
				_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: tc.id, BaseVersion: 2, Batch: 2, Ops: ops(opPut("k", "pwned"))})
				return err
			}, connect.CodeInvalidArgument, tc.words...)
			_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: tc.id})
			wantError(t, err, connect.CodeInvalidArgument, tc.words...)
			w := watchDeviceWith(t, http.DefaultClient, srv, "Bearer "+token(t, "alice"), &dalvv1.WatchRequest{DeviceId: tc.id})
			wantError(t, w.end(t, streamWait), connect.CodeInvalidArgument, tc.words...)
		})
	}
}

// Public-key tokens, as an identity provider such as Supabase signs them.
const (
	pkAudience = "authenticated"
	pkIssuer   = "https://project.example/auth/v1"
)

// jwksFixture is an identity provider's published key set, served by the
// test process, with its requests counted.
type jwksFixture struct {
	srv      *httptest.Server
	requests atomic.Int64
	mu       sync.Mutex
	status   int
	keys     []json.RawMessage
}

func newJWKSFixture(t *testing.T) *jwksFixture {
	f := &jwksFixture{status: http.StatusOK}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		f.mu.Lock()
		status, keys := f.status, f.keys
		f.mu.Unlock()
		w.WriteHeader(status)
		if keys == nil {
			keys = []json.RawMessage{}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *jwksFixture) publish(status int, keys ...json.RawMessage) {
	f.mu.Lock()
	f.status, f.keys = status, keys
	f.mu.Unlock()
}

func publicJWK(t testing.TB, key crypto.Signer, kid string) json.RawMessage {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(key.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, USE: jwkset.UseSig}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(j.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// signPK signs a provider-shaped token (aud, iss, sub, iat, exp, and
// extra) with key under alg, with kid in the header when not "".
func signPK(t testing.TB, alg string, key crypto.Signer, kid, user string, extra map[string]any) string {
	t.Helper()
	now := time.Now()
	c := jwt.MapClaims{"sub": user, "aud": pkAudience, "iss": pkIssuer, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(alg), c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writePEM(t testing.TB, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), strings.ToLower(strings.ReplaceAll(typ, " ", "-"))+".pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func pkixPEM(t testing.TB, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, "PUBLIC KEY", der)
}

// startPKServer starts dalv serve with the given flags and environment
// (beside the backend key), without the harness's HS256 secret unless env
// gives it.
func startPKServer(t *testing.T, env []string, args ...string) (*proc.Server, error) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := proc.Start(c, proc.Options{Binary: binary, Data: filepath.Join(t.TempDir(), "data"), Args: args,
		Env: append([]string{"DALV_BACKEND_KEYS=" + testBackendKey}, env...)})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if err := srv.Stop(15 * time.Second); err != nil {
			t.Errorf("dalv serve did not stop cleanly: %v\n%s", err, srv.Stderr())
		}
	})
	return srv, nil
}

// TestPublicKeyTokens runs the server with a provider's JWKS, a PEM public
// key and the HS256 secret at once: each kind of token reaches its user's
// partition, a rotated key works without a restart, a removed one stops,
// and the attacks on public-key tokens are refused as unauthenticated.
func TestPublicKeyTokens(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ec1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	jwks := newJWKSFixture(t)
	jwks.publish(http.StatusOK, publicJWK(t, rsaKey, "rsa-1"), publicJWK(t, ec1, "ec-1"))
	srv, err := startPKServer(t, []string{"DALV_JWT_SECRET=" + testSecret},
		"--jwks-url", jwks.srv.URL, "--jwt-public-key", pkixPEM(t, edKey),
		"--jwt-audience", pkAudience, "--jwt-issuer", pkIssuer, "--shared", "beta=tier:beta")
	if err != nil {
		t.Fatal(err)
	}
	b := backendClient(t, srv)
	commit(t, b, "victim", opPut("secret", "victim's"))

	hsClaims := map[string]any{"sub": "hs-user", "aud": pkAudience, "iss": pkIssuer, "exp": time.Now().Add(time.Hour).Unix()}
	for _, tc := range []struct{ name, token, user string }{
		{"RS256 from the JWKS", signPK(t, "RS256", rsaKey, "rsa-1", "rs-user", nil), "rs-user"},
		{"PS384 from the JWKS", signPK(t, "PS384", rsaKey, "rsa-1", "ps-user", nil), "ps-user"},
		{"ES256 from the JWKS", signPK(t, "ES256", ec1, "ec-1", "es-user", nil), "es-user"},
		{"EdDSA from the PEM file", signPK(t, "EdDSA", edKey, "", "ed-user", nil), "ed-user"},
		{"HS256 beside them", sign(t, hs256, hsClaims), "hs-user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := clientWith(srv, "Bearer "+tc.token)
			mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("via", tc.name))})
			wantPartition(t, b, tc.user, partition{1, []string{"via=" + tc.name + "@1"}})
			cfg, err := c.GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Msg.GetUser(); got != tc.user {
				t.Fatalf("GetConfig().User = %q, want %q", got, tc.user)
			}
		})
	}

	t.Run("shared partition gated by a claim", func(t *testing.T) {
		if _, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{Shared: "beta", Ops: ops(opPut("flag", "on"))})); err != nil {
			t.Fatal(err)
		}
		tier := clientWith(srv, "Bearer "+signPK(t, "ES256", ec1, "ec-1", "tester", map[string]any{"tier": []string{"beta"}}))
		if got, want := render(mustSync(t, tier, &dalvv1.SyncRequest{DeviceId: "d", Shared: "beta"}).GetChanges()), []string{"flag=on@1"}; !slices.Equal(got, want) {
			t.Fatalf("beta pulled with the tier claim = %v, want %v", got, want)
		}
		_, err := trySync(t, clientWith(srv, "Bearer "+signPK(t, "RS256", rsaKey, "rsa-1", "tester", nil)), &dalvv1.SyncRequest{DeviceId: "d", Shared: "beta"})
		wantError(t, err, connect.CodePermissionDenied, "tier")
	})

	t.Run("dalv token --key", func(t *testing.T) {
		der, err := x509.MarshalPKCS8PrivateKey(rsaKey)
		if err != nil {
			t.Fatal(err)
		}
		env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
		tok := strings.TrimSpace(cliOK(t, env, "token", "--key", writePEM(t, "PRIVATE KEY", der), "--kid", "rsa-1",
			"--aud", pkAudience, "--iss", pkIssuer, "--user", "cli-user"))
		cfg, err := clientWith(srv, "Bearer "+tok).GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{}))
		if err != nil {
			t.Fatalf("GetConfig with dalv token --key's token: %v", err)
		}
		if got, want := cfg.Msg.GetUser(), "cli-user"; got != want {
			t.Fatalf("user = %q, want %q", got, want)
		}
	})

	// The provider rotates: ec-2 is published and ec-1 withdrawn.
	jwks.publish(http.StatusOK, publicJWK(t, rsaKey, "rsa-1"), publicJWK(t, ec2, "ec-2"))
	before := jwks.requests.Load()
	mustSync(t, clientWith(srv, "Bearer "+signPK(t, "ES256", ec2, "ec-2", "rotated", nil)), &dalvv1.SyncRequest{DeviceId: "d"})
	if got := jwks.requests.Load() - before; got != 1 {
		t.Errorf("JWKS requests for the new kid = %d, want 1", got)
	}
	_, err = trySync(t, clientWith(srv, "Bearer "+signPK(t, "ES256", ec1, "ec-1", "victim", nil)), &dalvv1.SyncRequest{DeviceId: "d"})
	wantError(t, err, connect.CodeUnauthenticated, "signing key not known", `"ec-1"`)

	rsaPub, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaPubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	confused := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "victim", "aud": pkAudience, "iss": pkIssuer, "exp": time.Now().Add(time.Hour).Unix()})
	confused.Header["kid"] = "rsa-1"
	confusedToken, err := confused.SignedString(rsaPubPEM)
	if err != nil {
		t.Fatal(err)
	}
	attacker, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jku := func(header string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"sub": "victim", "aud": pkAudience, "iss": pkIssuer, "exp": time.Now().Add(time.Hour).Unix()})
		tok.Header["kid"] = "attacker"
		tok.Header[header] = jwks.srv.URL + "/attacker"
		s, err := tok.SignedString(attacker)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	flood := jwks.requests.Load()
	for _, tc := range []struct {
		name, token string
		words       []string
	}{
		{"alg confusion: HS256 keyed with the RSA public key", confusedToken, []string{"signature invalid"}},
		{"HS512", sign(t, jwt.SigningMethodHS512, hsClaims), []string{`"HS512"`, "accepts HS256, RS256", "EdDSA"}},
		{"alg none", unsigned(t, map[string]any{"sub": "victim", "aud": pkAudience, "iss": pkIssuer, "exp": time.Now().Add(time.Hour).Unix()}), []string{`"none"`}},
		{"jku header", jku("jku"), []string{"jku", "configured keys"}},
		{"x5u header", jku("x5u"), []string{"x5u"}},
		{"kid with a path", signPK(t, "RS256", rsaKey, "../../../etc/passwd", "victim", nil), []string{"path or URL"}},
		{"unknown kid", signPK(t, "ES256", attacker, "attacker", "victim", nil), []string{"signing key not known", `"attacker"`}},
		{"wrong aud", signPK(t, "RS256", rsaKey, "rsa-1", "victim", map[string]any{"aud": "other-app"}), []string{"audience", `"other-app"`}},
		{"wrong iss", signPK(t, "RS256", rsaKey, "rsa-1", "victim", map[string]any{"iss": "https://evil.example"}), []string{"issuer", "evil.example"}},
		{"no user claim", signPK(t, "RS256", rsaKey, "rsa-1", "victim", map[string]any{"sub": nil}), []string{"no subject"}},
		{"user claim not a string", signPK(t, "RS256", rsaKey, "rsa-1", "victim", map[string]any{"sub": 7}), []string{"not a string"}},
		{"user claim with a newline", signPK(t, "RS256", rsaKey, "rsa-1", "victim\nadmin", nil), []string{"control character"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := clientWith(srv, "Bearer "+tc.token)
			refused(t, b, "victim", func() error {
				_, err := trySync(t, c, &dalvv1.SyncRequest{DeviceId: "d", BaseVersion: 1, Batch: 1, Ops: ops(opPut("secret", "pwned"))})
				return err
			}, connect.CodeUnauthenticated, tc.words...)
		})
	}
	// The unknown kid, the path-like kid and the rejected headers caused no
	// fetch beyond one rate-limited refetch (the rotation above used it).
	if got := jwks.requests.Load() - flood; got > 0 {
		t.Errorf("JWKS requests during the refusals = %d, want none within the refetch interval", got)
	}
}

// TestPublicKeyStart checks the server's start with public keys: it exits
// with a clear message when no JWKS can be read or aud and iss are missing,
// starts anyway with --jwks-optional and picks the keys up once the JWKS
// answers, and without DALV_JWT_SECRET accepts no HS256 token.
func TestPublicKeyStart(t *testing.T) {
	t.Parallel()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := newJWKSFixture(t)
	jwks.publish(http.StatusServiceUnavailable)
	flags := []string{"--jwks-url", jwks.srv.URL, "--jwt-audience", pkAudience, "--jwt-issuer", pkIssuer}

	_, err := startPKServer(t, nil, flags...)
	if err == nil || !strings.Contains(err.Error(), "no JWKS could be read at start") || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "--jwks-optional") {
		t.Fatalf("start with the JWKS down: %v, want an exit that says so", err)
	}
	_, err = startPKServer(t, nil, "--jwks-url", jwks.srv.URL)
	if err == nil || !strings.Contains(err.Error(), "--jwt-audience") || !strings.Contains(err.Error(), "--jwt-no-audience") {
		t.Fatalf("start without an audience: %v, want an exit naming the flags", err)
	}

	srv, err := startPKServer(t, nil, append(flags, "--jwks-optional")...)
	if err != nil {
		t.Fatal(err)
	}
	// Without a kid nothing is fetched: refused, as no key is known.
	_, err = trySync(t, clientWith(srv, "Bearer "+signPK(t, "ES256", key, "", "alice", nil)), &dalvv1.SyncRequest{DeviceId: "d"})
	wantError(t, err, connect.CodeUnauthenticated, "signing key not known", "no configured key fits ES256")
	// The provider is back: the first token naming a kid the server lacks
	// fetches the set at once.
	jwks.publish(http.StatusOK, publicJWK(t, key, "k1"))
	mustSync(t, clientWith(srv, "Bearer "+signPK(t, "ES256", key, "k1", "alice", nil)), &dalvv1.SyncRequest{DeviceId: "d"})
	_, err = trySync(t, clientWith(srv, "Bearer "+token(t, "alice")), &dalvv1.SyncRequest{DeviceId: "d"})
	wantError(t, err, connect.CodeUnauthenticated, `"HS256"`, "accepts RS256")
}

// TestPublicKeyUserClaim runs the server with --user-claim, as for a
// provider that puts the user id elsewhere than sub, and --jwt-no-audience.
func TestPublicKeyUserClaim(t *testing.T) {
	t.Parallel()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv, err := startPKServer(t, nil, "--jwt-public-key", pkixPEM(t, key), "--jwt-no-audience", "--user-claim", "user_id")
	if err != nil {
		t.Fatal(err)
	}
	b := backendClient(t, srv)
	c := clientWith(srv, "Bearer "+signPK(t, "ES256", key, "", "ignored-sub", map[string]any{"user_id": "uid-7", "aud": "any-app", "iss": "anyone"}))
	mustSync(t, c, &dalvv1.SyncRequest{DeviceId: "d", Batch: 1, Ops: ops(opPut("k", "v"))})
	wantPartition(t, b, "uid-7", partition{1, []string{"k=v@1"}})
	wantPartition(t, b, "ignored-sub", partition{0, nil})
	_, err = trySync(t, clientWith(srv, "Bearer "+signPK(t, "ES256", key, "", "alice", nil)), &dalvv1.SyncRequest{DeviceId: "d"})
	wantError(t, err, connect.CodeUnauthenticated, `user claim "user_id" is missing`)
}
