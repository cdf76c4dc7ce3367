package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dalvdb/dalv/auth"
)

// TestHandler checks the example server: the page, the SDK bundle and a
// token the DalvDB server would accept for the user.
func TestHandler(t *testing.T) {
	t.Parallel()
	dist := t.TempDir()
	if err := os.WriteFile(filepath.Join(dist, "dalv.bundle.js"), []byte("export {}"), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := []byte("example-test-secret-0123456789abcdef")
	h, err := handler(dist, "http://127.0.0.1:7070", "alice", secret)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		return string(b)
	}
	if page := get("/"); !strings.Contains(page, `from "/dist/dalv.bundle.js"`) {
		t.Errorf("the page does not load the SDK bundle")
	}
	if js := get("/dist/dalv.bundle.js"); js != "export {}" {
		t.Errorf("bundle = %q", js)
	}
	var cfg map[string]string
	if err := json.Unmarshal([]byte(get("/config")), &cfg); err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewHS256(secret, auth.HS256Options{})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := v.Verify(t.Context(), cfg["token"])
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	if claims.Subject != "alice" || cfg["server"] != "http://127.0.0.1:7070" {
		t.Errorf("config %v, subject %q", cfg, claims.Subject)
	}
	if _, err := handler(dist, "", "alice", []byte("short")); err == nil {
		t.Error("a short secret was accepted")
	}
	if _, err := handler(t.TempDir(), "", "alice", secret); err == nil {
		t.Error("a missing bundle was accepted")
	}
}
