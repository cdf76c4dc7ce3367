package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

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
	out, ok := m.merge(nil, base, local, remote)
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
	// seen, when set, is told of each field changed on both sides before
	// fallback decides it.
	seen func(path []string, f Conflict)
}

func (m *merger) merge(path []string, base, local, remote map[string]json.RawMessage) (map[string]json.RawMessage, bool) {
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
		fpath := append(slices.Clone(path), f)
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
			fc := Conflict{Key: m.c.Key, Field: strings.Join(fpath, "."), Base: rawValue(b, bin), Local: rawValue(l, lin), Remote: rawValue(r, rin), Version: m.c.Version}
			if m.seen != nil {
				m.seen(fpath, fc)
			}
			res := m.fallback(fc)
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

// FieldConflict is one field of a deferred conflict that both sides
// changed to different values.
type FieldConflict struct {
	// Path is the field's path, its names joined with dots
	// ("address.city"); empty for a key that conflicts as a whole.
	Path string
	// Base, Local and Remote are the field's JSON on each side (the
	// whole values for an empty Path); nil where the field is absent.
	Base, Local, Remote *Value

	segs []string
}

// Side names the side of a conflict a field takes in [Replica.SettleFields].
type Side int

const (
	// KeepLocal takes the device's value.
	KeepLocal Side = iota + 1
	// KeepRemote takes the server's value.
	KeepRemote
)

// explain sets c.Fields and c.Merged from its three sides.
func (c *Conflict) explain() {
	c.Fields, c.Merged = nil, nil
	whole := func() {
		c.Fields = []FieldConflict{{Base: c.Base, Local: c.Local, Remote: c.Remote}}
		c.Merged = c.Remote
	}
	base, bok := jsonObject(c.Base)
	local, lok := jsonObject(c.Local)
	remote, rok := jsonObject(c.Remote)
	if c.Local == nil || c.Remote == nil || !bok || !lok || !rok {
		whole()
		return
	}
	m := merger{c: *c, fallback: ServerWins, seen: func(path []string, f Conflict) {
		c.Fields = append(c.Fields, FieldConflict{Path: f.Field, Base: f.Base, Local: f.Local, Remote: f.Remote, segs: path})
	}}
	out, ok := m.merge(nil, base, local, remote)
	b, err := json.Marshal(out)
	if !ok || err != nil {
		whole()
		return
	}
	c.Merged = value.Scalar(b)
}

// choose settles the fields of c named in sides: it returns the value the
// key holds when every conflicting field is chosen, or else c with the
// chosen fields no longer conflicting (their base becomes the remote value
// and the local side holds the choice), to keep in the inbox.
func (c *Conflict) choose(sides map[string]Side) (v *Value, rest *Conflict, err error) {
	c.explain()
	byPath := make(map[string]FieldConflict)
	for _, f := range c.Fields {
		byPath[f.Path] = f
	}
	for p, s := range sides {
		if _, ok := byPath[p]; !ok {
			return nil, nil, fmt.Errorf("settle %q: %w: field %q does not conflict", c.Key, ErrInvalid, p)
		}
		if s != KeepLocal && s != KeepRemote {
			return nil, nil, fmt.Errorf("settle %q: %w: field %q: choose KeepLocal or KeepRemote", c.Key, ErrInvalid, p)
		}
	}
	if f, ok := byPath[""]; ok {
		switch sides[""] {
		case KeepLocal:
			return f.Local, nil, nil
		case KeepRemote:
			return f.Remote, nil, nil
		}
		return nil, c, nil
	}
	base, _ := jsonObject(c.Base)
	local, _ := jsonObject(c.Local)
	for _, f := range c.Fields {
		s, ok := sides[f.Path]
		if !ok {
			continue
		}
		chosen := f.Local
		if s == KeepRemote {
			chosen = f.Remote
		}
		if base, err = setField(base, f.segs, f.Remote); err != nil {
			return nil, nil, err
		}
		if local, err = setField(local, f.segs, chosen); err != nil {
			return nil, nil, err
		}
	}
	nc := *c
	if nc.Base, err = objectValue(base); err != nil {
		return nil, nil, err
	}
	if nc.Local, err = objectValue(local); err != nil {
		return nil, nil, err
	}
	if len(sides) < len(c.Fields) {
		nc.explain()
		return nil, &nc, nil
	}
	remote, _ := jsonObject(c.Remote)
	m := merger{c: nc}
	out, ok := m.merge(nil, base, local, remote)
	if !ok {
		return nil, nil, fmt.Errorf("settle %q: internal: fields still conflict after every one was chosen", c.Key)
	}
	v, err = objectValue(out)
	return v, nil, err
}

// setField sets the field at path in obj to v (nil removes it), creating
// the objects on the way.
func setField(obj map[string]json.RawMessage, path []string, v *Value) (map[string]json.RawMessage, error) {
	if obj == nil {
		obj = map[string]json.RawMessage{}
	}
	f := path[0]
	if len(path) == 1 {
		if v == nil {
			delete(obj, f)
		} else {
			obj[f] = slices.Clone(v.GetScalar())
		}
		return obj, nil
	}
	sub, _ := rawObject(obj[f])
	sub, err := setField(sub, path[1:], v)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(sub)
	if err != nil {
		return nil, err
	}
	obj[f] = b
	return obj, nil
}

func objectValue(obj map[string]json.RawMessage) (*Value, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return value.Scalar(b), nil
}
