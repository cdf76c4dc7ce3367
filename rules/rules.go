package rules

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

// The two kinds of refusal. Every *Error wraps one of them.
var (
	// ErrPermission marks a write the writer may not make: a device writing
	// a backend key, a delete of a key with delete: false, a second write of
	// a create_only key, or a key no rule matches under default: refuse.
	ErrPermission = errors.New("write not permitted by the rules")
	// ErrInvalid marks a value the rules refuse: the wrong kind, a schema
	// failure, over max_bytes or max_items, or a check that is false.
	ErrInvalid = errors.New("value refused by the rules")
)

// Writer is who makes a write.
type Writer string

// The writers.
const (
	// Device is a user's device; it may write only keys whose rule says
	// writer: device.
	Device Writer = "device"
	// Backend is a trusted backend; it may write any key.
	Backend Writer = "backend"
)

// Kind is what a key holds.
type Kind string

// The kinds a rule may require.
const (
	// KindAny accepts any value (no kind given).
	KindAny Kind = ""
	// KindScalar is a scalar of any bytes.
	KindScalar Kind = "scalar"
	// KindJSON is a scalar holding one JSON value.
	KindJSON Kind = "json"
	// KindList is a list; each element is checked against the schema.
	KindList Kind = "list"
)

// Error is a write the rules refuse: it names the key, the rule (its match
// pattern, or "default: refuse") and what failed. It wraps ErrPermission or
// ErrInvalid.
type Error struct {
	// Key is the key written.
	Key string
	// Rule is the governing rule's match pattern, or "default: refuse".
	Rule string
	// Reason says what failed.
	Reason string
	kind   error
}

func (e *Error) Error() string {
	return fmt.Sprintf("key %q refused by rule %q: %s", e.Key, e.Rule, e.Reason)
}

// Unwrap returns ErrPermission or ErrInvalid.
func (e *Error) Unwrap() error { return e.kind }

// CompileError is one problem in a rules file, at a line of it.
type CompileError struct {
	// Line is the 1-based line of the file, 0 when unknown.
	Line int
	// Reason says what is wrong, naming the rule.
	Reason string
}

func (e *CompileError) Error() string {
	if e.Line == 0 {
		return "rules: " + e.Reason
	}
	return fmt.Sprintf("rules line %d: %s", e.Line, e.Reason)
}

// Set is a compiled rules file. It is safe for concurrent use and never
// changes; a reload compiles a new Set.
type Set struct {
	refuseDefault bool
	rules         []*rule // in file order
	source        []byte  // canonical JSON form
	hash          string
	spec          fileSpec
}

type rule struct {
	pattern        string
	segs           []string
	literals       int
	rest           bool // last segment is "**"
	firstWild      int
	order          int
	line           int
	writer         Writer
	kind           Kind
	schema         *jsonschema.Schema
	maxBytes       int
	maxItems       int
	prog           cel.Program // the check, evaluated with every variable known
	partial        cel.Program // the check, evaluated with the claims unknown
	noDelete       bool
	createOnly     bool
	backendTrusted bool
}

// fileSpec is the rules file's JSON form, the one sent to devices.
type fileSpec struct {
	Default string     `json:"default,omitempty"`
	Rules   []ruleSpec `json:"rules"`
}

type ruleSpec struct {
	Match          string `json:"match"`
	Writer         string `json:"writer,omitempty"`
	Kind           string `json:"kind,omitempty"`
	Schema         any    `json:"schema,omitempty"`
	MaxBytes       int    `json:"max_bytes,omitempty"`
	MaxItems       int    `json:"max_items,omitempty"`
	Check          string `json:"check,omitempty"`
	Delete         *bool  `json:"delete,omitempty"`
	CreateOnly     bool   `json:"create_only,omitempty"`
	BackendTrusted bool   `json:"backend_trusted,omitempty"`
}

// Parse compiles a rules file, YAML or JSON. On failure the error joins one
// *CompileError per problem found, each with its line.
func Parse(data []byte) (*Set, error) {
	spec, lines, errs := decode(data)
	if errs != nil {
		return nil, errors.Join(errs...)
	}
	return compile(spec, lines)
}

// decode reads the file into its spec, checking field names and types, and
// returns each rule's line and the lines of its fields.
func decode(data []byte) (fileSpec, []map[string]int, []error) {
	var spec fileSpec
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return spec, nil, []error{yamlError(err)}
	}
	if len(root.Content) == 0 {
		return spec, nil, []error{&CompileError{Reason: "the file is empty; it needs at least \"rules:\""}}
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return spec, nil, []error{&CompileError{Line: doc.Line, Reason: "the file must be a mapping with \"default\" and \"rules\""}}
	}
	var errs []error
	var lines []map[string]int
	sawRules := false
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		switch k.Value {
		case "default":
			if v.Kind != yaml.ScalarNode || (v.Value != "allow" && v.Value != "refuse") {
				errs = append(errs, &CompileError{Line: v.Line, Reason: "default must be allow or refuse"})
				continue
			}
			spec.Default = v.Value
		case "rules":
			sawRules = true
			if v.Kind != yaml.SequenceNode {
				if v.Tag == "!!null" {
					continue
				}
				errs = append(errs, &CompileError{Line: v.Line, Reason: "rules must be a list of rules"})
				continue
			}
			for _, rn := range v.Content {
				rs, ln, rerrs := decodeRule(rn)
				errs = append(errs, rerrs...)
				spec.Rules = append(spec.Rules, rs)
				lines = append(lines, ln)
			}
		default:
			errs = append(errs, &CompileError{Line: k.Line, Reason: fmt.Sprintf("unknown field %q; a rules file has default and rules", k.Value)})
		}
	}
	if !sawRules && errs == nil {
		errs = append(errs, &CompileError{Line: doc.Line, Reason: "missing \"rules\""})
	}
	return spec, lines, errs
}

func yamlError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		return &CompileError{Reason: strings.Join(te.Errors, "; ")}
	}
	// yaml.v3 syntax errors read "yaml: line N: reason".
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		_, reason, _ := strings.Cut(msg, ": ")
		return &CompileError{Line: line, Reason: reason}
	}
	return &CompileError{Reason: msg}
}

func decodeRule(n *yaml.Node) (ruleSpec, map[string]int, []error) {
	var rs ruleSpec
	lines := map[string]int{"": n.Line}
	if n.Kind != yaml.MappingNode {
		return rs, lines, []error{&CompileError{Line: n.Line, Reason: "a rule must be a mapping with at least \"match\""}}
	}
	var errs []error
	bad := func(v *yaml.Node, format string, args ...any) {
		errs = append(errs, &CompileError{Line: v.Line, Reason: fmt.Sprintf(format, args...)})
	}
	str := func(k, v *yaml.Node, dst *string) {
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
			bad(v, "%s must be a string", k.Value)
			return
		}
		*dst = v.Value
	}
	num := func(k, v *yaml.Node, dst *int) {
		var x int
		if v.Kind != yaml.ScalarNode || v.Tag != "!!int" || v.Decode(&x) != nil || x <= 0 {
			bad(v, "%s must be a positive integer", k.Value)
			return
		}
		*dst = x
	}
	boolean := func(k, v *yaml.Node) (bool, bool) {
		var b bool
		if v.Kind != yaml.ScalarNode || v.Tag != "!!bool" || v.Decode(&b) != nil {
			bad(v, "%s must be true or false", k.Value)
			return false, false
		}
		return b, true
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		lines[k.Value] = v.Line
		switch k.Value {
		case "match":
			str(k, v, &rs.Match)
		case "writer":
			str(k, v, &rs.Writer)
		case "kind":
			str(k, v, &rs.Kind)
		case "check":
			str(k, v, &rs.Check)
		case "schema":
			var s any
			if err := v.Decode(&s); err != nil {
				bad(v, "schema: %v", err)
				continue
			}
			js, err := jsonCompatible(s)
			if err != nil {
				bad(v, "schema: %v", err)
				continue
			}
			rs.Schema = js
		case "max_bytes":
			num(k, v, &rs.MaxBytes)
		case "max_items":
			num(k, v, &rs.MaxItems)
		case "delete":
			if b, ok := boolean(k, v); ok {
				rs.Delete = &b
			}
		case "create_only":
			rs.CreateOnly, _ = boolean(k, v)
		case "backend_trusted":
			rs.BackendTrusted, _ = boolean(k, v)
		default:
			bad(k, "unknown rule field %q; a rule has match, writer, kind, schema, max_bytes, max_items, check, delete, create_only and backend_trusted", k.Value)
		}
	}
	if _, ok := lines["match"]; !ok {
		bad(n, "a rule needs \"match\"")
	}
	return rs, lines, errs
}

// jsonCompatible turns what YAML decoded into what encoding/json writes:
// maps with string keys only.
func jsonCompatible(v any) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			c, err := jsonCompatible(e)
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case map[any]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("map key %v is not a string", k)
			}
			c, err := jsonCompatible(e)
			if err != nil {
				return nil, err
			}
			out[ks] = c
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			c, err := jsonCompatible(e)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return nil, fmt.Errorf("%v is not a JSON number", x)
		}
		return x, nil
	default:
		return x, nil
	}
}

func compile(spec fileSpec, lines []map[string]int) (*Set, error) {
	s := &Set{refuseDefault: spec.Default == "refuse"}
	env, err := celEnv()
	if err != nil {
		return nil, err
	}
	var errs []error
	seen := map[string]int{}
	for i, rs := range spec.Rules {
		ln := lines[i]
		at := func(field string) int {
			if l, ok := ln[field]; ok {
				return l
			}
			return ln[""]
		}
		bad := func(field, format string, args ...any) {
			errs = append(errs, &CompileError{Line: at(field), Reason: fmt.Sprintf("rule %q: ", rs.Match) + fmt.Sprintf(format, args...)})
		}
		r := &rule{pattern: rs.Match, order: i, line: ln[""], maxBytes: rs.MaxBytes, maxItems: rs.MaxItems,
			createOnly: rs.CreateOnly, backendTrusted: rs.BackendTrusted, noDelete: rs.Delete != nil && !*rs.Delete}
		if err := r.parsePattern(); err != nil {
			bad("match", "%v", err)
		}
		if prev, dup := seen[rs.Match]; dup {
			bad("match", "the same pattern as the rule at line %d; merge them", prev)
		}
		seen[rs.Match] = at("match")
		switch Writer(rs.Writer) {
		case "", Device:
			r.writer = Device
		case Backend:
			r.writer = Backend
		default:
			bad("writer", "writer %q: use device or backend", rs.Writer)
		}
		switch k := Kind(rs.Kind); k {
		case KindAny, KindScalar, KindJSON, KindList:
			r.kind = k
		default:
			bad("kind", "kind %q: use scalar, json or list", rs.Kind)
		}
		if rs.MaxItems > 0 && r.kind != KindList {
			bad("max_items", "max_items needs kind: list")
		}
		if rs.Schema != nil {
			if r.kind != KindJSON && r.kind != KindList {
				bad("schema", "schema needs kind: json or kind: list")
			} else if sch, err := compileSchema(rs.Schema, i); err != nil {
				bad("schema", "schema does not compile: %v", err)
			} else {
				r.schema = sch
			}
		}
		if rs.Check != "" {
			prg, partial, err := compileCheck(env, rs.Check)
			if err != nil {
				bad("check", "check %q: %v", rs.Check, err)
			} else {
				r.prog, r.partial = prg, partial
			}
		}
		s.rules = append(s.rules, r)
	}
	if errs != nil {
		return nil, errors.Join(errs...)
	}
	src, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("rules: encode: %w", err)
	}
	s.source = src
	s.spec = spec
	sum := sha256.Sum256(src)
	s.hash = hex.EncodeToString(sum[:])
	// Most specific first, so lookup takes the first match.
	sort.SliceStable(s.rules, func(i, j int) bool { return s.rules[i].moreSpecific(s.rules[j]) })
	return s, nil
}

func compileSchema(doc any, i int) (*jsonschema.Schema, error) {
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	url := fmt.Sprintf("rules:///rule-%d.json", i)
	if err := c.AddResource(url, v); err != nil {
		return nil, err
	}
	return c.Compile(url)
}

func (r *rule) parsePattern() error {
	if r.pattern == "" {
		return errors.New("empty match pattern")
	}
	r.segs = strings.Split(r.pattern, "/")
	r.firstWild = len(r.segs)
	for i, s := range r.segs {
		switch {
		case s == "**":
			if i != len(r.segs)-1 {
				return fmt.Errorf("match %q: \"**\" may only be the last segment", r.pattern)
			}
			r.rest = true
			r.firstWild = min(r.firstWild, i)
		case s == "*":
			r.firstWild = min(r.firstWild, i)
		case strings.Contains(s, "*"):
			return fmt.Errorf("match %q: segment %q mixes \"*\" with text; a wildcard is a whole segment", r.pattern, s)
		default:
			r.literals++
		}
	}
	return nil
}

// moreSpecific orders rules: more literal segments, then no "**", then a
// later first wildcard, then file order.
func (r *rule) moreSpecific(o *rule) bool {
	if r.literals != o.literals {
		return r.literals > o.literals
	}
	if r.rest != o.rest {
		return !r.rest
	}
	if r.firstWild != o.firstWild {
		return r.firstWild > o.firstWild
	}
	return r.order < o.order
}

func (r *rule) matches(key string) bool {
	segs := r.segs
	for i, p := range segs {
		if p == "**" {
			return true // at least one segment remains: checked below
		}
		var seg string
		var more bool
		seg, key, more = strings.Cut(key, "/")
		switch {
		case p != "*" && p != seg:
			return false
		case i == len(segs)-1:
			return !more
		case !more:
			// The key ended; only a following "**" could have matched, and it
			// needs one more segment.
			return false
		}
	}
	return false
}

// WithSystemPrefixes returns s with a rule "P**" (writer: backend) added
// for each system prefix P that ends in "/" and for which s has no rule of
// that pattern, so that the rules say what the prefixes mean and devices
// that know only the rules refuse those keys too. Other prefixes cannot be
// written as a pattern and are left to the prefix check.
func (s *Set) WithSystemPrefixes(prefixes []string) (*Set, error) {
	spec := s.spec
	spec.Rules = slices.Clone(spec.Rules)
	have := make(map[string]bool, len(spec.Rules))
	for _, r := range spec.Rules {
		have[r.Match] = true
	}
	added := false
	for _, p := range prefixes {
		m := p + "**"
		if !strings.HasSuffix(p, "/") || strings.Contains(p, "*") || have[m] {
			continue
		}
		have[m] = true
		spec.Rules = append(spec.Rules, ruleSpec{Match: m, Writer: string(Backend)})
		added = true
	}
	if !added {
		return s, nil
	}
	return compile(spec, make([]map[string]int, len(spec.Rules)))
}

// Hash is the hex SHA-256 of the rules' canonical JSON form: equal rules
// give equal hashes whatever the file's layout.
func (s *Set) Hash() string { return s.hash }

// Source is the rules' canonical JSON form, which Parse accepts; devices
// receive it in GetConfig.
func (s *Set) Source() []byte { return bytes.Clone(s.source) }

// Rule returns the match pattern of the rule that governs key, or "" when
// no rule matches.
func (s *Set) Rule(key string) string {
	if r := s.lookup(key); r != nil {
		return r.pattern
	}
	return ""
}

func (s *Set) lookup(key string) *rule {
	for _, r := range s.rules {
		if r.matches(key) {
			return r
		}
	}
	return nil
}
