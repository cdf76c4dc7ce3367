package main

import "testing"

// TestValidOrigin checks which --cors-origin values serve accepts.
func TestValidOrigin(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		origin string
		dev    bool
		ok     bool
	}{
		{"https://app.example.com", false, true},
		{"http://127.0.0.1:5173", false, true},
		{"*", true, true},
		{"*", false, false},
		{"app.example.com", false, false},
		{"https://app.example.com/path", false, false},
		{"https://app.example.com/", false, false},
		{"ftp://app.example.com", false, false},
	} {
		err := validOrigin(c.origin, c.dev)
		if (err == nil) != c.ok {
			t.Errorf("validOrigin(%q, dev=%v) = %v, want ok=%v", c.origin, c.dev, err, c.ok)
		}
	}
}
