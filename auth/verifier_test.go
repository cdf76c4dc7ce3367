package auth

import "testing"

func TestClaimsHas(t *testing.T) {
	c := &Claims{Subject: "alice", Raw: map[string]any{
		"tenant": "acme",
		"groups": []any{"editors", 7, "viewers"},
		"typed":  []string{"x"},
		"admin":  true,
		"level":  float64(3),
		"nested": map[string]any{"tenant": "acme"},
	}}
	tests := []struct {
		name, claim, value string
		want               bool
	}{
		{"string equal", "tenant", "acme", true},
		{"string differs", "tenant", "acm", false},
		{"string is case-sensitive", "tenant", "ACME", false},
		{"array contains", "groups", "viewers", true},
		{"array lacks", "groups", "admins", false},
		{"array skips non-strings", "groups", "7", false},
		{"string slice contains", "typed", "x", true},
		{"bool never matches", "admin", "true", false},
		{"number never matches", "level", "3", false},
		{"object never matches", "nested", "acme", false},
		{"absent claim", "missing", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, want := c.Has(tt.claim, tt.value), tt.want; got != want {
				t.Errorf("Has(%q, %q) = %v, want %v", tt.claim, tt.value, got, want)
			}
		})
	}
	t.Run("nil claims", func(t *testing.T) {
		var c *Claims
		if got, want := c.Has("tenant", "acme"), false; got != want {
			t.Errorf("(*Claims)(nil).Has() = %v, want %v", got, want)
		}
	})
}
