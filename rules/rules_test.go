package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/value"
)

const shop = `
default: allow
rules:
  - match: "prefs/*"
    writer: device
    kind: json
    schema: {type: string, maxLength: 32}
  - match: "cart/qty/*"
    kind: json
    schema: {type: integer, minimum: 1}
    check: "value <= 99"
  - match: "profile"
    kind: json
    schema: {type: object, required: [name], properties: {name: {type: string}}}
    check: "old == null || value.createdAt == old.createdAt"
    delete: false
  - match: "saved"
    kind: list
    max_items: 2
    schema: {type: string}
  - match: "sys/**"
    writer: backend
  - match: "sys/public/*"
    writer: backend
    backend_trusted: true
  - match: "handle"
    kind: scalar
    create_only: true
    max_bytes: 8
  - match: "inbox/*"
    check: "key.endsWith(user) && claims.plan == 'pro'"
`

func mustParse(t *testing.T, src string) *Set {
	t.Helper()
	s, err := Parse([]byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return s
}

func put(key, v string) Write {
	return Write{Key: key, Op: dalvv1.OpKind_OP_KIND_PUT, New: value.Scalar([]byte(v)), Writer: Device, User: "u1"}
}

func wantRefused(t *testing.T, err error, kind error, rule, reason string) {
	t.Helper()
	var re *Error
	if !errors.As(err, &re) || !errors.Is(err, kind) {
		t.Fatalf("got %v, want a %v *Error", err, kind)
	}
	if re.Rule != rule || !strings.Contains(err.Error(), reason) || !strings.Contains(err.Error(), rule) {
		t.Fatalf("got %q (rule %q), want rule %q and %q", err, re.Rule, rule, reason)
	}
}

func TestMatcherSpecificity(t *testing.T) {
	t.Parallel()
	s := mustParse(t, `
rules:
  - match: "**"
  - match: "a/**"
  - match: "a/*"
  - match: "*/b"
  - match: "a/b"
  - match: "a/*/c"
  - match: "a/b/**"
  - match: "*/*/c"
`)
	for key, want := range map[string]string{
		"a/b":     "a/b",   // two literals
		"a/x":     "a/*",   // one literal, no "**"
		"x/b":     "*/b",   // one literal
		"a/x/y":   "a/**",  // "a/*" needs exactly two segments
		"a/x/c":   "a/*/c", // two literals beat one
		"a/b/c":   "a/*/c", // equal literals: no "**" wins
		"a/b/d":   "a/b/**",
		"z/y/c":   "*/*/c",
		"z":       "**",
		"a":       "**", // "a/**" needs one more segment
		"a/":      "a/*",
		"q/r/s/t": "**",
	} {
		if got := s.Rule(key); got != want {
			t.Errorf("Rule(%q) = %q, want %q", key, got, want)
		}
	}
	// Equal specificity: the wildcard later in the key wins, then file order.
	s = mustParse(t, "rules:\n  - match: \"*/b\"\n  - match: \"a/*\"\n")
	if got := s.Rule("a/b"); got != "a/*" {
		t.Errorf("tie: Rule(a/b) = %q, want a/*", got)
	}
	if got := mustParse(t, "rules:\n  - match: \"x\"\n").Rule("y"); got != "" {
		t.Errorf("no match: %q", got)
	}
}

func TestFields(t *testing.T) {
	t.Parallel()
	s := mustParse(t, shop)
	cases := []struct {
		name   string
		w      Write
		kind   error // nil: allowed
		rule   string
		reason string
	}{
		{"prefs ok", put("prefs/theme", `"dark"`), nil, "", ""},
		{"prefs schema", put("prefs/theme", `"`+strings.Repeat("x", 40)+`"`), ErrInvalid, "prefs/*", "schema"},
		{"prefs not json", put("prefs/theme", `dark`), ErrInvalid, "prefs/*", "not JSON"},
		{"prefs list", Write{Key: "prefs/x", Op: dalvv1.OpKind_OP_KIND_PUT, New: value.List([]byte(`"a"`)), Writer: Device}, ErrInvalid, "prefs/*", "not a list"},
		{"qty ok", put("cart/qty/sku1", `3`), nil, "", ""},
		{"qty negative", put("cart/qty/sku1", `-5`), ErrInvalid, "cart/qty/*", "schema"},
		{"qty check", put("cart/qty/sku1", `100`), ErrInvalid, "cart/qty/*", "check is false"},
		{"profile ok", put("profile", `{"name":"Ann","createdAt":1}`), nil, "", ""},
		{"profile required", put("profile", `{"createdAt":1}`), ErrInvalid, "profile", "schema"},
		{"profile createdAt kept", func() Write {
			w := put("profile", `{"name":"Ann","createdAt":1}`)
			w.Old = value.Scalar([]byte(`{"name":"A","createdAt":1}`))
			return w
		}(), nil, "", ""},
		{"profile createdAt changed", func() Write {
			w := put("profile", `{"name":"Ann","createdAt":2}`)
			w.Old = value.Scalar([]byte(`{"name":"A","createdAt":1}`))
			return w
		}(), ErrInvalid, "profile", "check is false"},
		{"profile delete", Write{Key: "profile", Op: dalvv1.OpKind_OP_KIND_DELETE, Old: value.Scalar([]byte(`{}`)), Writer: Device}, ErrPermission, "profile", "delete: false"},
		{"saved add", Write{Key: "saved", Op: dalvv1.OpKind_OP_KIND_LIST_ADD, Element: []byte(`"a"`), New: value.List([]byte(`"a"`)), Writer: Device}, nil, "", ""},
		{"saved element schema", Write{Key: "saved", Op: dalvv1.OpKind_OP_KIND_LIST_ADD, Element: []byte(`1`), New: value.List([]byte(`1`)), Writer: Device}, ErrInvalid, "saved", "the element does not match"},
		{"saved put item schema", Write{Key: "saved", Op: dalvv1.OpKind_OP_KIND_PUT, New: value.List([]byte(`"a"`), []byte(`2`)), Writer: Device}, ErrInvalid, "saved", "list item 1"},
		{"saved max_items", Write{Key: "saved", Op: dalvv1.OpKind_OP_KIND_PUT, New: value.List([]byte(`"a"`), []byte(`"b"`), []byte(`"c"`)), Writer: Device}, ErrInvalid, "saved", "max_items 2"},
		{"saved scalar", put("saved", `"a"`), ErrInvalid, "saved", "not a scalar"},
		{"sys device", put("sys/orders/1", `{}`), ErrPermission, "sys/**", "only backends"},
		{"sys backend", func() Write { w := put("sys/orders/1", `{}`); w.Writer = Backend; return w }(), nil, "", ""},
		{"handle create", put("handle", `ann`), nil, "", ""},
		{"handle twice", func() Write { w := put("handle", `bob`); w.Old = value.Scalar([]byte("ann")); return w }(), ErrPermission, "handle", "create_only"},
		{"handle max_bytes", put("handle", `123456789`), ErrInvalid, "handle", "max_bytes 8"},
		{"handle list", Write{Key: "handle", Op: dalvv1.OpKind_OP_KIND_PUT, New: value.List([]byte("a")), Writer: Device}, ErrInvalid, "handle", "not a list"},
		{"unmatched allowed", put("anything", `x`), nil, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := s.Check(c.w)
			if c.kind == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			wantRefused(t, err, c.kind, c.rule, c.reason)
		})
	}
}

func TestBackendTrustedAndDefaultRefuse(t *testing.T) {
	t.Parallel()
	s := mustParse(t, `
default: refuse
rules:
  - match: "sys/**"
    writer: backend
    kind: json
  - match: "sys/trusted/*"
    writer: backend
    kind: json
    backend_trusted: true
`)
	b := func(key, v string) Write { w := put(key, v); w.Writer = Backend; return w }
	wantRefused(t, s.Check(b("sys/x", "not json")), ErrInvalid, "sys/**", "not JSON")
	if err := s.Check(b("sys/trusted/x", "not json")); err != nil {
		t.Fatalf("trusted: %v", err)
	}
	wantRefused(t, s.Check(put("sys/trusted/x", "1")), ErrPermission, "sys/trusted/*", "only backends")
	wantRefused(t, s.Check(put("other", "1")), ErrPermission, "default: refuse", "no rule matches")
	if err := s.Check(b("other", "1")); err != nil {
		t.Fatalf("default refuse applies to devices only: %v", err)
	}
}

func TestCELVariables(t *testing.T) {
	t.Parallel()
	s := mustParse(t, shop)
	w := put("inbox/u1", `"hi"`)
	w.Claims = map[string]any{"plan": "pro"}
	if err := s.Check(w); err != nil {
		t.Fatalf("key/user/claims: %v", err)
	}
	w.Claims = map[string]any{"plan": "free"}
	wantRefused(t, s.Check(w), ErrInvalid, "inbox/*", "check is false")
	w.Claims = nil // claims.plan missing: an evaluation error refuses
	wantRefused(t, s.Check(w), ErrInvalid, "inbox/*", "check failed to evaluate")
	w = put("inbox/u2", `"hi"`)
	w.Claims = map[string]any{"plan": "pro"}
	wantRefused(t, s.Check(w), ErrInvalid, "inbox/*", "check is false")

	s = mustParse(t, `
rules:
  - match: "n"
    check: "value == 1.5 || (old != null && old.items.size() < value.items.size())"
  - match: "l"
    kind: list
    check: "value.size() <= 2 && value.all(x, x.startsWith('a'))"
`)
	if err := s.Check(put("n", "1.5")); err != nil {
		t.Fatalf("double: %v", err)
	}
	w = put("n", `{"items":[1,2]}`)
	w.Old = value.Scalar([]byte(`{"items":[1]}`))
	if err := s.Check(w); err != nil {
		t.Fatalf("old: %v", err)
	}
	w.Old = value.Scalar([]byte(`{"items":[1,2,3]}`))
	wantRefused(t, s.Check(w), ErrInvalid, "n", "check is false")
	ok := Write{Key: "l", Op: dalvv1.OpKind_OP_KIND_PUT, New: value.List([]byte("ab"), []byte("ac"))}
	if err := s.Check(ok); err != nil {
		t.Fatalf("list check: %v", err)
	}
	ok.New = value.List([]byte("ab"), []byte("b"))
	wantRefused(t, s.Check(ok), ErrInvalid, "l", "check is false")
}

func TestCompileErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, src string
		line      int
		reason    string
	}{
		{"syntax", "rules:\n  - match: [\n", 2, "did not find"},
		{"unknown top", "rules: []\nfoo: 1\n", 2, `unknown field "foo"`},
		{"unknown field", "rules:\n  - match: a\n    wrter: device\n", 3, `unknown rule field "wrter"`},
		{"no match", "rules:\n  - kind: json\n", 2, `needs "match"`},
		{"bad default", "default: maybe\nrules: []\n", 1, "allow or refuse"},
		{"bad writer", "rules:\n  - match: a\n    writer: admin\n", 3, `writer "admin"`},
		{"bad kind", "rules:\n  - match: a\n    kind: blob\n", 3, `kind "blob"`},
		{"bad pattern", "rules:\n  - match: \"a/**/b\"\n", 2, "last segment"},
		{"partial wildcard", "rules:\n  - match: \"a*\"\n", 2, "whole segment"},
		{"duplicate", "rules:\n  - match: a\n  - match: a\n", 3, "same pattern as the rule at line 2"},
		{"schema without kind", "rules:\n  - match: a\n    schema: {type: string}\n", 3, "schema needs kind"},
		{"bad schema", "rules:\n  - match: a\n    kind: json\n    schema: {type: strin}\n", 4, "schema does not compile"},
		{"check syntax", "rules:\n  - match: a\n\n    check: \"value <=\"\n", 4, "check"},
		{"check type", "rules:\n  - match: a\n    check: \"value + 1\"\n", 3, "not a bool"},
		{"check unknown var", "rules:\n  - match: a\n    check: \"nope == 1\"\n", 3, "undeclared reference"},
		{"max_items on scalar", "rules:\n  - match: a\n    max_items: 3\n", 3, "needs kind: list"},
		{"max_bytes negative", "rules:\n  - match: a\n    max_bytes: -1\n", 3, "positive integer"},
		{"delete not bool", "rules:\n  - match: a\n    delete: nope\n", 3, "true or false"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.src))
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a *CompileError", err)
			}
			if ce.Line != c.line || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("got %q at line %d, want line %d and %q", err, ce.Line, c.line, c.reason)
			}
		})
	}
}

func TestHashAndSource(t *testing.T) {
	t.Parallel()
	a := mustParse(t, shop)
	// The same rules as JSON, laid out differently, hash the same.
	b := mustParse(t, string(a.Source()))
	if a.Hash() != b.Hash() || len(a.Hash()) != 64 {
		t.Fatalf("hash %q vs %q", a.Hash(), b.Hash())
	}
	c := mustParse(t, strings.Replace(shop, "max_items: 2", "max_items: 3", 1))
	if c.Hash() == a.Hash() {
		t.Fatal("a changed rule kept the hash")
	}
	if err := b.Check(put("cart/qty/x", "100")); err == nil {
		t.Fatal("rules from Source lost the check")
	}
}

func TestClaimsUnknown(t *testing.T) {
	t.Parallel()
	s := mustParse(t, shop)
	// A device checking locally does not know its claims: the check that
	// reads them is left to the server, the rest still applies.
	w := put("inbox/u1", `"hi"`)
	w.ClaimsUnknown = true
	if err := s.Check(w); err != nil {
		t.Fatalf("a check on unknown claims refused: %v", err)
	}
	w = put("inbox/u2", `"hi"`)
	w.ClaimsUnknown = true
	wantRefused(t, s.Check(w), ErrInvalid, "inbox/*", "check is false")
	w = put("cart/qty/a", "100")
	w.ClaimsUnknown = true
	wantRefused(t, s.Check(w), ErrInvalid, "cart/qty/*", "check is false")
}

// TestCheckCostLimit checks that a check with a comprehension stops at the
// cost limit on a large list, and that one without runs unbounded by it.
func TestCheckCostLimit(t *testing.T) {
	t.Parallel()
	s := mustParse(t, `rules:
  - match: "big"
    kind: list
    check: "value.all(x, value.all(y, x == y || x != y))"
  - match: "plain"
    kind: list
    check: "size(value) > 0"
`)
	items := make([][]byte, 3000)
	for i := range items {
		items[i] = []byte(fmt.Sprint(i))
	}
	w := Write{Key: "big", Op: dalvv1.OpKind_OP_KIND_PUT, New: value.List(items...), Writer: Device, User: "u1"}
	wantRefused(t, s.Check(w), ErrInvalid, "big", "cost")
	w.Key = "plain"
	if err := s.Check(w); err != nil {
		t.Errorf("a check without a comprehension on a long list: %v", err)
	}
}

// BenchmarkCheck is the cost of checking one PUT against a rule with a
// schema and a CEL check.
func BenchmarkCheck(b *testing.B) {
	s, err := Parse([]byte(shop))
	if err != nil {
		b.Fatal(err)
	}
	w := put("profile", `{"name":"Ann","createdAt":1}`)
	w.Old = value.Scalar([]byte(`{"name":"A","createdAt":1}`))
	for b.Loop() {
		if err := s.Check(w); err != nil {
			b.Fatal(err)
		}
	}
}

func TestWithSystemPrefixes(t *testing.T) {
	t.Parallel()
	s := mustParse(t, "rules:\n  - match: \"prefs/*\"\n  - match: \"internal/**\"\n    writer: backend\n    kind: json\n")
	w, err := s.WithSystemPrefixes([]string{"sys/", "internal/", "legacy."})
	if err != nil {
		t.Fatal(err)
	}
	if got := w.Rule("sys/orders/1"); got != "sys/**" {
		t.Fatalf("sys/orders/1 is governed by %q, want sys/**", got)
	}
	wantRefused(t, w.Check(put("sys/orders/1", "1")), ErrPermission, "sys/**", "only backends")
	// A rule of the same pattern is kept as written.
	b := put("internal/x", "not json")
	b.Writer = Backend
	wantRefused(t, w.Check(b), ErrInvalid, "internal/**", "not JSON")
	if w.Hash() == s.Hash() || !strings.Contains(string(w.Source()), `"sys/**"`) {
		t.Fatalf("the prefix rule is not in the source: %s", w.Source())
	}
	if same, _ := s.WithSystemPrefixes([]string{"legacy."}); same != s {
		t.Fatal("a prefix that is no pattern changed the rules")
	}
}

// BenchmarkCheckBench checks a write under bench/rules.yaml's rule for the
// bench's keys: a size limit, a schema, and a CEL check of the key, the
// value and the old value.
func BenchmarkCheckBench(b *testing.B) {
	s, err := Parse([]byte(`rules:
  - match: "bench/*"
    kind: json
    max_bytes: 65536
    schema: {type: string, minLength: 1, maxLength: 65536}
    check: "key.startsWith('bench/') && size(value) > 0 && old != value"
`))
	if err != nil {
		b.Fatal(err)
	}
	w := put("bench/k1", `"vvvvvvvvvvvvvvvvvvvvvvvvvvvvv42"`)
	w.Old = value.Scalar([]byte(`"vvvvvvvvvvvvvvvvvvvvvvvvvvvvv41"`))
	for b.Loop() {
		if err := s.Check(w); err != nil {
			b.Fatal(err)
		}
	}
}

// deviceCases is testdata/device_cases.json: device writes and the
// server's outcome for each, which web/src/rules.spec.ts runs through the
// browser SDK's check too.
type deviceCases struct {
	Rules json.RawMessage `json:"rules"`
	Cases []struct {
		Name         string   `json:"name"`
		Op           string   `json:"op"`
		Key          string   `json:"key"`
		Value        *string  `json:"value"`
		Elem         string   `json:"elem"`
		Old          *string  `json:"old"`
		OldList      []string `json:"old_list"`
		Want         string   `json:"want"`
		Rule         string   `json:"rule"`
		DeviceChecks *bool    `json:"device_checks"`
	} `json:"cases"`
}

// TestDeviceCases runs the shared table of device writes: each is allowed,
// or refused with the right kind and rule.
func TestDeviceCases(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("testdata/device_cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var dc deviceCases
	if err := json.Unmarshal(data, &dc); err != nil {
		t.Fatal(err)
	}
	s := mustParse(t, string(dc.Rules))
	kinds := map[string]dalvv1.OpKind{"put": dalvv1.OpKind_OP_KIND_PUT, "delete": dalvv1.OpKind_OP_KIND_DELETE,
		"listAdd": dalvv1.OpKind_OP_KIND_LIST_ADD, "listRemove": dalvv1.OpKind_OP_KIND_LIST_REMOVE}
	for _, c := range dc.Cases {
		op := &dalvv1.Op{Kind: kinds[c.Op], Key: c.Key}
		switch {
		case c.Value != nil:
			op.Value = value.Scalar([]byte(*c.Value))
		case c.Op == "listAdd" || c.Op == "listRemove":
			op.Value = value.Scalar([]byte(c.Elem))
		}
		var old *dalvv1.Value
		switch {
		case c.Old != nil:
			old = value.Scalar([]byte(*c.Old))
		case c.OldList != nil:
			items := make([][]byte, len(c.OldList))
			for i, it := range c.OldList {
				items[i] = []byte(it)
			}
			old = value.List(items...)
		}
		t.Run(c.Name, func(t *testing.T) {
			err := s.CheckOp(op, old, Device, "u1", nil)
			switch c.Want {
			case "allow":
				if err != nil {
					t.Errorf("%v, want it allowed", err)
				}
			case "permission_denied":
				wantRefused(t, err, ErrPermission, c.Rule, "")
			case "invalid_argument":
				wantRefused(t, err, ErrInvalid, c.Rule, "")
			default:
				t.Fatalf("want %q is not a case's outcome", c.Want)
			}
		})
	}
}
