package client

import (
	"bytes"
	"encoding/json"
	"slices"

	"github.com/dalvdb/dalv/value"
)

// MergeJSON is a [Resolver] for keys holding JSON objects: a three-way
// merge, field by field (recursing into fields that are objects on every
// side). A field changed on one side only takes that side's value; a field
// changed on both sides to different values defers the whole key to the
// inbox. Keys that are not JSON objects on all three sides, or deleted on
// one side, are deferred too. Use [MergeJSONWith] to decide those instead.
func MergeJSON(c Conflict) Resolution { return mergeJSON(c, nil) }

// MergeJSONWith returns a [Resolver] that merges like [MergeJSON] and hands
// each field changed on both sides to fallback: it is called with Field set
// to the field's path ("address.city") and Base, Local and Remote holding
// that field's JSON (nil where absent); Use(nil) removes the field, and
// Defer defers the whole key. A key that cannot be merged field by field
// goes to fallback whole, with Field empty.
func MergeJSONWith(fallback Resolver) Resolver {
	return func(c Conflict) Resolution { return mergeJSON(c, fallback) }
}

func mergeJSON(c Conflict, fallback Resolver) Resolution {
	whole := func() Resolution {
		if fallback == nil {
			return Defer()
		}
		return fallback(c)
	}
	if c.Local == nil || c.Remote == nil {
		return whole()
	}
	base, bok := jsonObject(c.Base)
	local, lok := jsonObject(c.Local)
	remote, rok := jsonObject(c.Remote)
	if !bok || !lok || !rok {
		return whole()
	}
	m := merger{c: c, fallback: fallback}
	out, ok := m.merge("", base, local, remote)
	if !ok {
		return Defer()
	}
	b, err := json.Marshal(out)
	if err != nil {
		return whole()
	}
	return Use(value.Scalar(b))
}

// jsonObject decodes a JSON object scalar; an absent value is the empty
// object.
func jsonObject(v *Value) (map[string]json.RawMessage, bool) {
	if v == nil {
		return map[string]json.RawMessage{}, true
	}
	if value.IsList(v) {
		return nil, false
	}
	return rawObject(v.GetScalar())
}

func rawObject(b []byte) (map[string]json.RawMessage, bool) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return nil, false
	}
	return m, true
}

type merger struct {
	c        Conflict
	fallback Resolver
}

func (m *merger) merge(path string, base, local, remote map[string]json.RawMessage) (map[string]json.RawMessage, bool) {
	var fields []string
	for _, obj := range []map[string]json.RawMessage{base, local, remote} {
		for f := range obj {
			if !slices.Contains(fields, f) {
				fields = append(fields, f)
			}
		}
	}
	slices.Sort(fields)
	out := make(map[string]json.RawMessage)
	for _, f := range fields {
		b, bin := base[f]
		l, lin := local[f]
		r, rin := remote[f]
		fpath := f
		if path != "" {
			fpath = path + "." + f
		}
		var v json.RawMessage
		var in bool
		switch {
		case sameJSON(l, lin, b, bin):
			v, in = r, rin
		case sameJSON(r, rin, b, bin), sameJSON(l, lin, r, rin):
			v, in = l, lin
		default:
			lo, lok := rawObject(l)
			ro, rok := rawObject(r)
			bo, bok := rawObject(b)
			if !bin {
				bo, bok = map[string]json.RawMessage{}, true
			}
			if lin && rin && lok && rok && bok {
				sub, ok := m.merge(fpath, bo, lo, ro)
				if !ok {
					return nil, false
				}
				enc, err := json.Marshal(sub)
				if err != nil {
					return nil, false
				}
				v, in = enc, true
				break
			}
			if m.fallback == nil {
				return nil, false
			}
			res := m.fallback(Conflict{Key: m.c.Key, Field: fpath, Base: rawValue(b, bin), Local: rawValue(l, lin), Remote: rawValue(r, rin), Version: m.c.Version})
			if res.deferred {
				return nil, false
			}
			if res.value == nil {
				continue
			}
			if value.IsList(res.value) || !json.Valid(res.value.GetScalar()) {
				return nil, false
			}
			v, in = res.value.GetScalar(), true
		}
		if in {
			out[f] = v
		}
	}
	return out, true
}

func rawValue(b json.RawMessage, in bool) *Value {
	if !in {
		return nil
	}
	return value.Scalar(slices.Clone([]byte(b)))
}

// sameJSON reports whether two optional JSON texts are equal as JSON.
func sameJSON(a json.RawMessage, ain bool, b json.RawMessage, bin bool) bool {
	if ain != bin {
		return false
	}
	if !ain || bytes.Equal(a, b) {
		return true
	}
	return bytes.Equal(canonicalJSON(a), canonicalJSON(b))
}

// canonicalJSON re-encodes JSON with sorted object keys; invalid JSON is
// returned as it is.
func canonicalJSON(b []byte) []byte {
	var v any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return b
	}
	out, err := json.Marshal(v)
	if err != nil {
		return b
	}
	return out
}
