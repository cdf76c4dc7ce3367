package main

// The operator commands' one value encoding. Values are bytes on the wire;
// the commands treat them as JSON, as the SDKs and the curl session store
// them:
//
//   - put takes JSON; an argument that is not JSON and does not look like
//     an attempt at it (a bare word such as light) is stored as a JSON
//     string ("light"); --raw stores the argument's bytes as they are.
//   - get, list and watch print a value that is valid JSON as compact JSON,
//     and any other bytes as base64 behind a marker: base64:... in tables,
//     {"base64":"..."} in place of {"json":...} with --json.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/value"
)

// valueHelp is what --help says about the encoding, shared by the commands.
const valueHelp = `Values are JSON: get, list and watch print a value that is valid JSON as
JSON (in tables and with --json, where it is {"json": VALUE}), and any other
bytes as base64 behind a marker: base64:... in tables, {"base64": "..."}
with --json. A list is [a, b] in tables and {"list": [...]} with --json.`

// encodeArg turns put's VALUE argument into the bytes to store: raw as
// given, else JSON, with a bare word taken as a JSON string.
func encodeArg(arg string, raw bool) ([]byte, error) {
	if raw {
		return []byte(arg), nil
	}
	if json.Valid([]byte(arg)) {
		return []byte(arg), nil
	}
	if looksLikeJSON(arg) {
		return nil, fmt.Errorf("VALUE %q is not valid JSON: quote a string as '\"...\"', or pass --raw to store the bytes as given", arg)
	}
	b, err := json.Marshal(arg)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// looksLikeJSON reports whether s starts as a JSON object, array, string
// or number would: such text is a JSON value with a typo rather than a
// word meant as a string.
func looksLikeJSON(s string) bool {
	s = strings.TrimSpace(s)
	if s == "" {
		return false
	}
	return strings.ContainsRune(`{["-0123456789`, rune(s[0]))
}

// valueText renders a value for a table or a feed line: JSON as compact
// JSON, other bytes as base64:..., lists as [a, b].
func valueText(v *dalvv1.Value) string {
	if l := v.GetList(); l != nil {
		items := make([]string, len(l.GetItems()))
		for i, it := range l.GetItems() {
			items[i] = bytesText(it)
		}
		return "[" + strings.Join(items, ", ") + "]"
	}
	return bytesText(v.GetScalar())
}

func bytesText(b []byte) string {
	// Compact JSON is one line with no control characters: those are
	// escaped inside JSON strings.
	if j, ok := compactJSON(b); ok {
		return string(j)
	}
	return "base64:" + base64.StdEncoding.EncodeToString(b)
}

// compactJSON is b without insignificant space when b is valid JSON.
func compactJSON(b []byte) ([]byte, bool) {
	if !json.Valid(b) {
		return nil, false
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, false
	}
	return buf.Bytes(), true
}

// jsonValue is a value in the commands' --json output: exactly one of
// JSON, Base64 and List is set.
type jsonValue struct {
	JSON   json.RawMessage `json:"json,omitempty"`
	Base64 *string         `json:"base64,omitempty"`
	List   *[]jsonValue    `json:"list,omitempty"`
}

// toJSONValue renders v for --json output, JSON compacted.
func toJSONValue(v *dalvv1.Value) *jsonValue {
	if v == nil {
		return nil
	}
	jv := encodeValue(v, false)
	return &jv
}

// encodeValue renders v as a jsonValue. With exact, a scalar or list item
// is JSON only when its bytes are already compact JSON, so that decoding
// it gives back the same bytes (as an export must); otherwise JSON is
// compacted for people to read.
func encodeValue(v *dalvv1.Value, exact bool) jsonValue {
	if l := v.GetList(); l != nil {
		items := make([]jsonValue, len(l.GetItems()))
		for i, it := range l.GetItems() {
			items[i] = encodeBytes(it, exact)
		}
		return jsonValue{List: &items}
	}
	return encodeBytes(v.GetScalar(), exact)
}

func encodeBytes(b []byte, exact bool) jsonValue {
	if j, ok := compactJSON(b); ok && (!exact || (len(b) > 0 && utf8.Valid(b) && bytes.Equal(j, b))) {
		return jsonValue{JSON: j}
	}
	s := base64.StdEncoding.EncodeToString(b)
	return jsonValue{Base64: &s}
}

// value returns the value v stands for: the inverse of encodeValue with
// exact set.
func (v jsonValue) value() (*dalvv1.Value, error) {
	if v.List != nil {
		if v.JSON != nil || v.Base64 != nil {
			return nil, errors.New(`"list" is set with "json" or "base64"`)
		}
		items := make([][]byte, len(*v.List))
		for i, it := range *v.List {
			if it.List != nil {
				return nil, fmt.Errorf("list item %d is a list", i)
			}
			b, err := it.bytes()
			if err != nil {
				return nil, fmt.Errorf("list item %d: %w", i, err)
			}
			items[i] = b
		}
		return value.List(items...), nil
	}
	b, err := v.bytes()
	if err != nil {
		return nil, err
	}
	return value.Scalar(b), nil
}

// bytes returns the bytes a scalar or list item stands for.
func (v jsonValue) bytes() ([]byte, error) {
	switch {
	case v.JSON != nil && v.Base64 != nil:
		return nil, errors.New(`both "json" and "base64" are set`)
	case v.JSON != nil:
		return []byte(v.JSON), nil
	case v.Base64 != nil:
		b, err := base64.StdEncoding.DecodeString(*v.Base64)
		if err != nil {
			return nil, fmt.Errorf(`"base64" is not standard base64: %v`, err)
		}
		return b, nil
	}
	return nil, errors.New(`neither "json" nor "base64" is set`)
}

// jsonChange is a dalvv1.Change in --json output. Versions are strings, as
// in the API's JSON, since they may exceed what JSON numbers hold exactly.
type jsonChange struct {
	Key     string     `json:"key"`
	Value   *jsonValue `json:"value,omitempty"`
	Deleted bool       `json:"deleted,omitempty"`
	Version uint64     `json:"version,string"`
}

func toJSONChanges(items []*dalvv1.Change) []jsonChange {
	out := make([]jsonChange, len(items))
	for i, c := range items {
		out[i] = jsonChange{Key: c.GetKey(), Value: toJSONValue(c.GetValue()), Deleted: c.GetDeleted(), Version: c.GetVersion()}
	}
	return out
}

// jsonRead is get's and list's --json output: the partition's version and
// the keys read.
type jsonRead struct {
	Version uint64       `json:"version,string"`
	Items   []jsonChange `json:"items"`
}

// jsonOp is a dalvv1.Op in --json output; Kind is the enum's name.
type jsonOp struct {
	Kind  string     `json:"kind"`
	Key   string     `json:"key"`
	Value *jsonValue `json:"value,omitempty"`
}

// jsonEvent is a dalvv1.ChangeEvent in watch's --json output.
type jsonEvent struct {
	Cursor  string   `json:"cursor"`
	User    string   `json:"user,omitempty"`
	Shared  string   `json:"shared,omitempty"`
	Version uint64   `json:"version,string"`
	Erased  bool     `json:"erased,omitempty"`
	Ops     []jsonOp `json:"ops"`
}

func toJSONEvent(ev *dalvv1.ChangeEvent) jsonEvent {
	out := jsonEvent{Cursor: ev.GetCursor(), User: ev.GetUser(), Shared: ev.GetShared(),
		Version: ev.GetVersion(), Erased: ev.GetErased(), Ops: make([]jsonOp, len(ev.GetOps()))}
	for i, op := range ev.GetOps() {
		out.Ops[i] = jsonOp{Kind: op.GetKind().String(), Key: op.GetKey(), Value: toJSONValue(op.GetValue())}
	}
	return out
}

// writeJSON writes v as one line of JSON, leaving <, > and & as they are.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("print JSON: %w", err)
	}
	return nil
}
