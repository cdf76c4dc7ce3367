package auth

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
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

func TestBearerTransport(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(r.Header.Get("Authorization")))
	}))
	defer srv.Close()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer other")
	resp, err := (&http.Client{Transport: Bearer("k-1", nil)}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	if string(got) != "Bearer k-1" {
		t.Errorf("server saw %q, want %q", got, "Bearer k-1")
	}
	if req.Header.Get("Authorization") != "Bearer other" {
		t.Error("the caller's request was changed")
	}
}
