package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/value"
)

// Write is one op to check: what the key held before it (Old, nil when
// absent) and after it (New, nil when deleted), who writes it and for whom.
type Write struct {
	// Key is the key written.
	Key string
	// Op is the op's kind; for LIST_ADD, Element is the element added.
	Op      dalvv1.OpKind
	Element []byte
	// Old is what the key held before the op, nil when absent.
	Old *dalvv1.Value
	// New is what the key holds after the op, nil when absent.
	New *dalvv1.Value
	// Writer is who writes.
	Writer Writer
	// User is the partition's user id (a shared partition's name for
	// backend writes to it).
	User string
	// Claims are the writer's token claims, empty for backends.
	Claims map[string]any
	// ClaimsUnknown says the claims are not known (a device checking its
	// own write before queuing it): a check whose outcome depends on them
	// passes, and the server decides.
	ClaimsUnknown bool
}

// Check reports whether the rules allow w: nil, or an *Error wrapping
// ErrPermission or ErrInvalid that names the key, the rule and what failed.
func (s *Set) Check(w Write) error {
	r := s.lookup(w.Key)
	if r == nil {
		if s.refuseDefault && w.Writer != Backend {
			return &Error{Key: w.Key, Rule: "default: refuse", Reason: "no rule matches the key", kind: ErrPermission}
		}
		return nil
	}
	if w.Writer == Backend && r.backendTrusted {
		return nil
	}
	return r.check(w)
}

func (r *rule) refuse(w Write, kind error, format string, args ...any) error {
	return &Error{Key: w.Key, Rule: r.pattern, Reason: fmt.Sprintf(format, args...), kind: kind}
}

func (r *rule) check(w Write) error {
	if r.writer == Backend && w.Writer != Backend {
		return r.refuse(w, ErrPermission, "only backends may write it (writer: backend)")
	}
	if w.Op == dalvv1.OpKind_OP_KIND_DELETE {
		if r.noDelete {
			return r.refuse(w, ErrPermission, "it may not be deleted (delete: false)")
		}
		return nil
	}
	if r.createOnly && w.Old != nil {
		return r.refuse(w, ErrPermission, "it is written once and already holds a value (create_only)")
	}
	if w.New == nil {
		// A LIST_REMOVE that emptied nothing, or an op that left no value:
		// nothing to check about a value.
		return nil
	}
	isList := value.IsList(w.New)
	switch r.kind {
	case KindScalar, KindJSON:
		if isList {
			return r.refuse(w, ErrInvalid, "it holds a %s, not a list", r.kind)
		}
	case KindList:
		if !isList {
			return r.refuse(w, ErrInvalid, "it holds a list, not a scalar")
		}
	}
	if r.maxBytes > 0 {
		if n := value.Size(w.New); n > r.maxBytes {
			return r.refuse(w, ErrInvalid, "the value is %d bytes, over max_bytes %d", n, r.maxBytes)
		}
	}
	if r.maxItems > 0 && isList {
		if n := len(w.New.GetList().GetItems()); n > r.maxItems {
			return r.refuse(w, ErrInvalid, "the list holds %d items, over max_items %d", n, r.maxItems)
		}
	}
	// A scalar is decoded once, for the kind, the schema and the check.
	var doc any
	var docErr error
	if !isList && (r.kind == KindJSON || r.schema != nil || r.prog != nil) {
		doc, docErr = decodeJSON(w.New.GetScalar())
	}
	if r.kind == KindJSON && docErr != nil {
		return r.refuse(w, ErrInvalid, "the value is not JSON (kind: json)")
	}
	if r.schema != nil {
		if err := r.validateSchema(w, doc, docErr); err != nil {
			return err
		}
	}
	if r.prog != nil {
		var v any
		switch {
		case isList:
			v = celValue(w.New)
		case docErr == nil:
			v = doc
		default:
			v = celScalarText(w.New.GetScalar())
		}
		return r.evalCheck(w, v)
	}
	return nil
}

// validateSchema checks a json value, or a list's elements: only the
// element added for LIST_ADD (the others passed when they were added), all
// of them for a PUT.
func (r *rule) validateSchema(w Write, doc any, docErr error) error {
	validate := func(b []byte, doc any, err error, what string) error {
		if err != nil {
			return r.refuse(w, ErrInvalid, "%s is not JSON: %v", what, jsonError(b, err))
		}
		if err := r.schema.Validate(doc); err != nil {
			return r.refuse(w, ErrInvalid, "%s does not match the schema: %s", what, schemaReason(err))
		}
		return nil
	}
	one := func(b []byte, what string) error {
		doc, err := decodeJSON(b)
		return validate(b, doc, err, what)
	}
	if !value.IsList(w.New) {
		return validate(w.New.GetScalar(), doc, docErr, "the value")
	}
	if w.Op == dalvv1.OpKind_OP_KIND_LIST_ADD {
		return one(w.Element, "the element")
	}
	if w.Op != dalvv1.OpKind_OP_KIND_PUT {
		return nil
	}
	for i, it := range w.New.GetList().GetItems() {
		if err := one(it, fmt.Sprintf("list item %d", i)); err != nil {
			return err
		}
	}
	return nil
}

// schemaReason flattens a validation error to one line.
func schemaReason(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func (r *rule) evalCheck(w Write, val any) error {
	act := &activation{w: &w, value: val}
	prog := r.prog
	var in any = act
	if w.ClaimsUnknown {
		pv, err := cel.PartialVars(act, cel.AttributePattern("claims"))
		if err != nil {
			return r.refuse(w, ErrInvalid, "check failed to evaluate: %v", err)
		}
		prog, in = r.partial, pv
	}
	out, _, err := prog.Eval(in)
	if types.IsUnknown(out) {
		return nil // it depends on the claims: the server decides
	}
	if err != nil {
		return r.refuse(w, ErrInvalid, "check failed to evaluate: %v", err)
	}
	if out != types.True {
		return r.refuse(w, ErrInvalid, "check is false")
	}
	return nil
}

// activation gives a check its variables, each worked out only when the
// check first reads it: most checks read one or two of them.
type activation struct {
	w         *Write
	value     any
	old       any // once oldSet
	claims    any // once claimsSet
	oldSet    bool
	claimsSet bool
}

// ResolveName implements interpreter.Activation.
func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "value":
		return a.value, true
	case "key":
		return a.w.Key, true
	case "user":
		return a.w.User, true
	case "old":
		if !a.oldSet {
			a.old, a.oldSet = celValue(a.w.Old), true
		}
		return a.old, true
	case "claims":
		if !a.claimsSet {
			a.claims, a.claimsSet = celClaims(a.w.Claims), true
		}
		return a.claims, true
	}
	return nil, false
}

// Parent implements interpreter.Activation.
func (a *activation) Parent() cel.Activation { return nil }

func celEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("value", cel.DynType),
		cel.Variable("old", cel.DynType),
		cel.Variable("key", cel.StringType),
		cel.Variable("user", cel.StringType),
		cel.Variable("claims", cel.MapType(cel.StringType, cel.DynType)),
	)
}

// compileCheck parses and type-checks a check, which must be a bool, and
// plans it twice: for the server, which knows every variable, and for a
// device, which does not know the claims (partial evaluation, which costs
// more).
func compileCheck(env *cel.Env, src string) (prog, partial cel.Program, err error) {
	ast, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		return nil, nil, errors.New(strings.Join(strings.Fields(iss.Err().Error()), " "))
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return nil, nil, fmt.Errorf("it is a %s, not a bool; compare explicitly (e.g. value.ok == true)", ast.OutputType())
	}
	var bound []cel.ProgramOption
	if hasComprehension(ast) {
		bound = append(bound, cel.CostLimit(maxCheckCost))
	}
	if prog, err = env.Program(ast, append(bound, cel.EvalOptions(cel.OptOptimize))...); err != nil {
		return nil, nil, err
	}
	partial, err = env.Program(ast, append(bound, cel.EvalOptions(cel.OptOptimize, cel.OptPartialEval))...)
	return prog, partial, err
}

// maxCheckCost bounds the work of one evaluation of a check with a
// comprehension (all, exists, exists_one, map, filter), in CEL's cost
// units: one over a large list stops there instead of taking the server's
// time. A check without one takes time linear in its variables, which the
// server's limits on keys, values and tokens bound, and runs without the
// cost tracking, which would double its time.
const maxCheckCost = 1_000_000

// hasComprehension reports whether a check has a comprehension.
func hasComprehension(a *cel.Ast) bool {
	found := false
	celast.PostOrderVisit(a.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		found = found || e.Kind() == celast.ComprehensionKind
	}))
	return found
}

// celValue is how a value reads in a check: null when absent; a scalar as
// its JSON value when it holds JSON (integers as int, other numbers as
// double), else as a string (or bytes when not UTF-8); a list as a list of
// its elements read the same way.
func celValue(v *dalvv1.Value) any {
	if v == nil {
		return types.NullValue
	}
	if value.IsList(v) {
		items := v.GetList().GetItems()
		out := make([]any, len(items))
		for i, it := range items {
			out[i] = celScalar(it)
		}
		return out
	}
	return celScalar(v.GetScalar())
}

func celScalar(b []byte) any {
	if x, err := decodeJSON(b); err == nil {
		return x
	}
	return celScalarText(b)
}

// celScalarText is a scalar that is not JSON as a check reads it.
func celScalarText(b []byte) any {
	if utf8.Valid(b) {
		return string(b)
	}
	return b
}

func celClaims(c map[string]any) map[string]any {
	if c == nil {
		return map[string]any{}
	}
	out := make(map[string]any, len(c))
	for k, v := range c {
		out[k] = normalize(v)
	}
	return out
}

// mayBeJSON reports whether b starts as a JSON value may: most scalars a
// check reads that are not JSON (text, identifiers, binary) do not.
func mayBeJSON(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 {
		return false
	}
	switch c := b[0]; {
	case c == '{', c == '[', c == '"', c == '-', c >= '0' && c <= '9', c == 't', c == 'f', c == 'n':
		return true
	}
	return false
}

// errNotJSON is decodeJSON's error for bytes that are not one JSON value.
var errNotJSON = errors.New("not a JSON value")

// jsonError is why b, which decodeJSON refused with err, is not JSON, as
// encoding/json words it.
func jsonError(b []byte, err error) error {
	if err == errNotJSON {
		var x any
		if uerr := json.Unmarshal(b, &x); uerr != nil {
			return uerr
		}
	}
	return err
}

// decodeJSON decodes one JSON value with integers as int64.
func decodeJSON(b []byte) (any, error) {
	if !mayBeJSON(b) {
		return nil, errNotJSON // without a decoder's allocations
	}
	if t := bytes.TrimLeft(b, " \t\r\n"); t[0] == '"' {
		// A string, the commonest JSON value, needs no decoder.
		var x string
		if err := json.Unmarshal(t, &x); err != nil {
			return nil, err
		}
		return x, nil
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var x any
	if err := d.Decode(&x); err != nil {
		return nil, err
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON value")
	}
	return normalize(x), nil
}

func normalize(x any) any {
	switch v := x.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	case float64:
		if v == float64(int64(v)) && v >= -1<<53 && v <= 1<<53 {
			return int64(v)
		}
		return v
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = normalize(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = normalize(e)
		}
		return out
	default:
		return v
	}
}

// CheckOp checks op on a key that holds old (nil when absent): it works out
// the value op leaves and checks the write as CheckApplied does. An op the
// value does not allow (a list op on a scalar) returns value's error.
func (s *Set) CheckOp(op *dalvv1.Op, old *dalvv1.Value, by Writer, user string, claims map[string]any) error {
	next, changed, err := value.Apply(old, op)
	if err != nil {
		return err
	}
	if !changed {
		next = old
	}
	return s.Check(NewWrite(op, old, next, by, user, claims))
}

// NewWrite is the Write of op, which takes its key from old to next (nil
// when absent), by a writer to user's partition.
func NewWrite(op *dalvv1.Op, old, next *dalvv1.Value, by Writer, user string, claims map[string]any) Write {
	w := Write{Key: op.GetKey(), Op: op.GetKind(), Old: old, New: next, Writer: by, User: user, Claims: claims}
	if op.GetKind() == dalvv1.OpKind_OP_KIND_LIST_ADD {
		w.Element = op.GetValue().GetScalar()
	}
	return w
}
