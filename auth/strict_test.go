package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// signRaw signs header and claims given as raw JSON with the test secret,
// so the token carries bytes and escapes a JSON encoder would not write.
func signRaw(tb testing.TB, header, claims string) string {
	tb.Helper()
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	signing := enc(header) + "." + enc(claims)
	sig, err := jwt.SigningMethodHS256.Sign(signing, testSecret)
	if err != nil {
		tb.Fatal(err)
	}
	return signing + "." + enc(string(sig))
}

// identityCases are correctly signed tokens whose identity is ambiguous or
// unusable: each must be refused with want and a message containing msg.
var identityCases = []struct {
	name   string
	header string
	claims string // exp and iat are appended
	want   error
	msg    string
}{
	{"lone high surrogate in sub", "", `"sub":"victim\ud800"`, ErrNotUTF8, `\ud800`},
	{"lone high surrogate at the end of a pair range", "", `"sub":"victim\udbff"`, ErrNotUTF8, `\udbff`},
	{"lone low surrogate in sub", "", `"sub":"victim\uDC00"`, ErrNotUTF8, `\uDC00`},
	{"reversed surrogate pair", "", `"sub":"victim\udc00\ud800"`, ErrNotUTF8, `\udc00`},
	{"high surrogate before a non-surrogate escape", "", `"sub":"victim\ud800\u0041"`, ErrNotUTF8, `\ud800`},
	{"lone surrogate in another claim", "", `"sub":"victim","name":"\ud800"`, ErrNotUTF8, "claims"},
	{"lone surrogate in a claim name", "", `"sub":"victim","\ud800":1`, ErrNotUTF8, "claims"},
	{"raw byte 0xff in sub", "", "\"sub\":\"victim\xff\"", ErrNotUTF8, "0xff"},
	{"truncated UTF-8 in sub", "", "\"sub\":\"victim\xc3\"", ErrNotUTF8, "0xc3"},
	{"overlong UTF-8 in sub", "", "\"sub\":\"victim\xc0\xaf\"", ErrNotUTF8, "0xc0"},
	{"encoded surrogate in sub", "", "\"sub\":\"victim\xed\xa0\x80\"", ErrNotUTF8, "0xed"},
	{"invalid UTF-8 in the header", "{\"alg\":\"HS256\",\"kid\":\"\xff\"}", `"sub":"victim"`, ErrNotUTF8, "header"},
	{"sub given twice", "", `"sub":"mallory","sub":"victim"`, ErrDuplicateClaim, `"sub"`},
	{"sub given twice, once escaped", "", `"sub":"mallory","s\u0075b":"victim"`, ErrDuplicateClaim, `"sub"`},
	{"other claim given twice", "", `"sub":"victim","role":"user","role":"admin"`, ErrDuplicateClaim, `"role"`},
	{"nested name given twice", "", `"sub":"victim","app":{"role":"user","role":"admin"}`, ErrDuplicateClaim, `"role"`},
	{"alg given twice", `{"alg":"none","alg":"HS256"}`, `"sub":"victim"`, ErrDuplicateClaim, "header"},
	{"NUL in sub", "", `"sub":"vic\u0000tim"`, ErrUserID, "U+0000"},
	{"newline in sub", "", `"sub":"victim\nadmin"`, ErrUserID, "U+000A"},
	{"DEL in sub", "", `"sub":"victim\u007f"`, ErrUserID, "U+007F"},
	{"C1 control in sub", "", `"sub":"victim\u0085"`, ErrUserID, "U+0085"},
	{"sub too long", "", `"sub":"` + strings.Repeat("v", 257) + `"`, ErrUserID, "257 bytes"},
	{"empty sub", "", `"sub":""`, ErrMissingSubject, "empty"},
	{"sub null", "", `"sub":null`, ErrMissingSubject, "not a string"},
}

// identityAccepted are tokens near the refused ones that name a user
// unambiguously, with the user they name.
var identityAccepted = []struct {
	name   string
	claims string
	want   string
}{
	{"escaped surrogate pair", `"sub":"victim\ud83d\ude00"`, "victim\U0001F600"},
	{"escaped replacement character", `"sub":"victim\ufffd"`, "victim\ufffd"},
	{"UTF-8 text", `"sub":"zoé"`, "zoé"},
	{"escaped backslash before u", `"sub":"victim\\ud800"`, `victim\ud800`},
	{"256 bytes", `"sub":"` + strings.Repeat("v", 256) + `"`, strings.Repeat("v", 256)},
	{"same name in two objects", `"sub":"victim","a":{"x":1},"b":{"x":2}`, "victim"},
}

func identityToken(tb testing.TB, header, claims string) string {
	tb.Helper()
	if header == "" {
		header = `{"alg":"HS256","typ":"JWT"}`
	}
	tail := `,"iat":` + strconv.FormatInt(testNow.Unix()-60, 10) + `,"exp":` + strconv.FormatInt(testNow.Unix()+3600, 10) + `}`
	return signRaw(tb, header, "{"+claims+tail)
}

func TestVerifyIdentity(t *testing.T) {
	v := newVerifier(t, HS256Options{})
	for _, tt := range identityCases {
		t.Run(tt.name, func(t *testing.T) {
			token := identityToken(t, tt.header, tt.claims)
			c, err := v.Verify(context.Background(), token)
			if c != nil {
				t.Errorf("Verify() claims = %+v, want nil", c)
			}
			if got := matching(err); len(got) != 1 || got[0] != tt.want {
				t.Fatalf("Verify() error = %v, matches %v, want exactly %v", err, got, tt.want)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Verify() error = %q, want it to contain %q", err, tt.msg)
			}
		})
	}
	for _, tt := range identityAccepted {
		t.Run("accepts "+tt.name, func(t *testing.T) {
			c, err := v.Verify(context.Background(), identityToken(t, "", tt.claims))
			if err != nil {
				t.Fatalf("Verify() error = %v", err)
			}
			if got, want := c.Subject, tt.want; got != want {
				t.Fatalf("Subject = %q, want %q", got, want)
			}
		})
	}
}

// TestVerifyIdentityForgedFirst checks that a token that is both forged and
// ambiguous is reported as forged: nothing in unverified JSON is examined
// beyond what parsing needs.
func TestVerifyIdentityForgedFirst(t *testing.T) {
	token := identityToken(t, "", `"sub":"a","sub":"b"`)
	forged := token[:strings.LastIndexByte(token, '.')+1] + strings.Repeat("A", 43)
	if _, err := newVerifier(t, HS256Options{}).Verify(context.Background(), forged); !errors.Is(err, ErrSignature) {
		t.Fatalf("Verify(forged) = %v, want ErrSignature", err)
	}
}

func TestLoneSurrogate(t *testing.T) {
	tests := []struct {
		json string
		want int // offset, -1 for none
	}{
		{`"a"`, -1},
		{`"\ud800"`, 1},
		{`"\ud800\udc00"`, -1},
		{`"\ud800\udc00\udc00"`, 13},
		{`"\\ud800"`, -1},
		{`"\\\ud800"`, 3},
		{`"\"\ud800"`, 3},
		{`{"a":"\ud800x"}`, 6},
		{`"\ud800`, 1},
		{`"\ud80"`, -1},
		{`\ud800`, -1}, // outside a string: not JSON, left to the parser
	}
	for _, tt := range tests {
		i, _, ok := loneSurrogate([]byte(tt.json))
		if !ok {
			i = -1
		}
		if got, want := i, tt.want; got != want {
			t.Errorf("loneSurrogate(%s) = %d, want %d", tt.json, got, want)
		}
	}
}
