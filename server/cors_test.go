package server

import (
	"net/http"
	"strings"
	"testing"
)

// TestCORS checks that the origins of Config.CORSOrigins get preflights
// answered for the Connect, gRPC-Web and streaming headers, and others none.
func TestCORS(t *testing.T) {
	t.Parallel()
	_, url, _ := testServer(t, Config{CORSOrigins: []string{"http://app.test"}})
	preflight := func(origin, method, headers string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodOptions, url+"/dalv.v1.ClientService/Watch", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", method)
		req.Header.Set("Access-Control-Request-Headers", headers)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	// Browsers send the requested headers lowercased and sorted.
	for _, headers := range []string{
		"authorization,connect-protocol-version,connect-timeout-ms,content-type",                               // Connect unary
		"authorization,connect-accept-encoding,connect-content-encoding,connect-protocol-version,content-type", // Connect streaming
		"authorization,content-type,grpc-timeout,x-grpc-web,x-user-agent",                                      // gRPC-Web
	} {
		resp := preflight("http://app.test", "POST", headers)
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "http://app.test" {
			t.Errorf("preflight with %s: Access-Control-Allow-Origin %q, want http://app.test", headers, got)
		}
		allowed := strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers"))
		for _, h := range strings.Split(headers, ",") {
			if !strings.Contains(allowed, h) {
				t.Errorf("preflight: header %s not allowed (%q)", h, allowed)
			}
		}
	}
	if got := preflight("http://evil.test", "POST", "content-type").Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("another origin got Access-Control-Allow-Origin %q", got)
	}

	// An actual request exposes the headers Connect clients read.
	req, _ := http.NewRequest(http.MethodPost, url+"/dalv.v1.ClientService/GetConfig", strings.NewReader("{}"))
	req.Header.Set("Origin", "http://app.test")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Access-Control-Expose-Headers"); !strings.Contains(strings.ToLower(got), "grpc-status") {
		t.Errorf("Access-Control-Expose-Headers %q lacks grpc-status", got)
	}
}

// TestNoCORS checks that without origins no CORS header is sent.
func TestNoCORS(t *testing.T) {
	t.Parallel()
	_, url, _ := testServer(t, Config{})
	req, _ := http.NewRequest(http.MethodOptions, url+"/dalv.v1.ClientService/Sync", nil)
	req.Header.Set("Origin", "http://app.test")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("Access-Control-Allow-Origin %q without CORSOrigins", got)
	}
}
