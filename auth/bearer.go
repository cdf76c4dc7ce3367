package auth

import (
	"fmt"
	"net/http"
	"strings"
)

// BearerToken returns the token in an Authorization header value of the form
// "Bearer <token>"; the scheme is matched case-insensitively. It returns
// [ErrMissingToken] for an empty value or a bare "Bearer", and
// [ErrMalformedToken] for any other scheme.
func BearerToken(header string) (string, error) {
	h := strings.TrimSpace(header)
	if h == "" {
		return "", ErrMissingToken
	}
	scheme, token, found := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		if !found {
			// Likely a bare token: do not echo it.
			return "", fmt.Errorf("%w: Authorization header has no scheme, want \"Bearer <token>\"", ErrMalformedToken)
		}
		return "", fmt.Errorf("%w: Authorization scheme is %s, want Bearer", ErrMalformedToken, quote(scheme))
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", fmt.Errorf("%w: Authorization header says Bearer but has no token", ErrMissingToken)
	}
	if strings.ContainsAny(token, " \t\r\n") {
		return "", fmt.Errorf("%w: bearer token contains whitespace", ErrMalformedToken)
	}
	return token, nil
}

// Bearer returns an http.RoundTripper that sends every request through next
// (http.DefaultTransport when nil) with "Authorization: Bearer <token>": a
// client made on it speaks for one backend key or device token on unary
// calls and streams alike.
func Bearer(token string, next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return bearer{token: token, next: next}
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
