package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestJSONAnswersCompact checks that JSON answers carry no whitespace,
// under both JSON content types, so that they are the same bytes whatever
// the build. protojson's own output puts a space after commas in about half
// of all builds (it hashes the binary), so without the compact codecs this
// test fails only in those.
func TestJSONAnswersCompact(t *testing.T) {
	t.Parallel()
	_, url, _ := testServer(t, Config{})
	post := func(procedure, contentType, body string) string {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, url+procedure, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+testKey)
		req.Header.Set("Content-Type", contentType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s\n%s", procedure, resp.Status, b)
		}
		return string(b)
	}
	if got, want := post("/dalv.v1.BackendService/Commit", "application/json",
		`{"user": "u", "ops": [{"kind": "OP_KIND_PUT", "key": "a", "value": {"scalar": "MQ=="}}, {"kind": "OP_KIND_LIST_ADD", "key": "l", "value": {"scalar": "eA=="}}]}`),
		`{"version":"1"}`; got != want {
		t.Errorf("Commit answered %s, want %s", got, want)
	}
	want := `{"version":"1","items":[{"key":"a","value":{"scalar":"MQ=="},"version":"1"},{"key":"l","value":{"list":{"items":["eA=="]}},"version":"1"}]}`
	for _, ct := range []string{"application/json", "application/json; charset=utf-8"} {
		if got := post("/dalv.v1.BackendService/Get", ct, `{"user": "u", "keys": ["a", "l"]}`); got != want {
			t.Errorf("Get as %s answered\n%s\nwant\n%s", ct, got, want)
		}
	}
}
