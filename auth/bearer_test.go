package auth

import (
	"errors"
	"strings"
	"testing"
)

func TestBearerToken(t *testing.T) {
	tests := []struct {
		name, header string
		want         string
		wantErr      error
	}{
		{name: "bearer", header: "Bearer abc.def.ghi", want: "abc.def.ghi"},
		{name: "lowercase scheme", header: "bearer abc.def.ghi", want: "abc.def.ghi"},
		{name: "uppercase scheme", header: "BEARER abc.def.ghi", want: "abc.def.ghi"},
		{name: "surrounding and inner spaces", header: "  Bearer   abc.def.ghi  ", want: "abc.def.ghi"},
		{name: "empty", header: "", wantErr: ErrMissingToken},
		{name: "blank", header: "   ", wantErr: ErrMissingToken},
		{name: "scheme only", header: "Bearer", wantErr: ErrMissingToken},
		{name: "scheme and space", header: "Bearer   ", wantErr: ErrMissingToken},
		{name: "basic", header: "Basic dXNlcjpwYXNz", wantErr: ErrMalformedToken},
		{name: "no scheme", header: "abc.def.ghi", wantErr: ErrMalformedToken},
		{name: "scheme glued to token", header: "Bearerabc.def.ghi", wantErr: ErrMalformedToken},
		{name: "two tokens", header: "Bearer abc def", wantErr: ErrMalformedToken},
		{name: "tab inside token", header: "Bearer abc\tdef", wantErr: ErrMalformedToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := BearerToken(tt.header)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("BearerToken(%q) error = %v, want %v", tt.header, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("BearerToken(%q) = %q, want %q", tt.header, got, tt.want)
			}
		})
	}
}

func TestBearerTokenDoesNotEchoToken(t *testing.T) {
	const token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
	for _, header := range []string{token, "Token " + token} {
		_, err := BearerToken(header)
		if err == nil || strings.Contains(err.Error(), token) {
			t.Errorf("BearerToken(%q) error = %v, want an error without the token", header, err)
		}
	}
}

func FuzzBearerToken(f *testing.F) {
	for _, seed := range []string{"Bearer a.b.c", "bearer  x", "Basic x", "", "Bearer", "Bearer a b"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		token, err := BearerToken(header)
		if err != nil {
			if token != "" {
				t.Fatalf("BearerToken(%q) = %q with error %v", header, token, err)
			}
			if !errors.Is(err, ErrMissingToken) && !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("BearerToken(%q) error = %v, want ErrMissingToken or ErrMalformedToken", header, err)
			}
			return
		}
		if token == "" || strings.ContainsAny(token, " \t\r\n") || !strings.Contains(header, token) {
			t.Fatalf("BearerToken(%q) = %q", header, token)
		}
	})
}
