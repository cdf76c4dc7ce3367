package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/dalvdb/dalv/rules"
)

func TestRuleCases(t *testing.T) {
	t.Parallel()
	s, err := rules.Parse([]byte(`
rules:
  - match: "cart/qty/*"
    kind: json
    schema: {type: integer, minimum: 1}
    check: "value <= 99"
  - match: "profile"
    kind: json
    check: "old == null || value.createdAt == old.createdAt"
    delete: false
  - match: "saved"
    kind: list
    max_items: 2
  - match: "sys/**"
    writer: backend
`))
	if err != nil {
		t.Fatal(err)
	}
	pass := `
cases:
  - {key: cart/qty/a, value: 3, expect: allow}
  - {key: cart/qty/a, value: 100, expect: refuse, rule: "cart/qty/*"}
  - {key: profile, value: {createdAt: 2}, old: {createdAt: 1}, expect: refuse}
  - {key: profile, value: {createdAt: 1, name: x}, old: {createdAt: 1}, expect: allow}
  - {key: profile, op: delete, old: {createdAt: 1}, expect: refuse}
  - {key: saved, op: list_add, value: c, old_list: [a, b], expect: refuse}
  - {key: saved, op: list_add, value: b, old_list: [a], expect: allow}
  - {key: sys/orders/1, value: {}, expect: refuse}
  - {key: sys/orders/1, value: {}, writer: backend, expect: allow}
  - {key: inbox, value: 1, claims: {plan: pro}, user: u2, expect: allow}
`
	var out bytes.Buffer
	if err := runRuleCases(&out, s, []byte(pass)); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "all 10 cases pass") {
		t.Fatalf("output:\n%s", out.String())
	}
	out.Reset()
	fail := "cases:\n  - {key: cart/qty/a, value: 3, expect: refuse}\n  - {key: cart/qty/a, value: 0, expect: refuse, rule: other}\n  - {key: x, expect: maybe}\n"
	err = runRuleCases(&out, s, []byte(fail))
	if err == nil || !strings.Contains(err.Error(), "3 of 3 cases failed") {
		t.Fatalf("err %v\n%s", err, out.String())
	}
	for _, want := range []string{"expected refuse, got allowed", `expected refuse by rule "other"`, "expect must be allow or refuse"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if err := runRuleCases(&out, s, []byte("cases:\n  - {key: a, expct: allow}\n")); err == nil {
		t.Fatal("an unknown case field was accepted")
	}
}
