// Package history records what concurrent devices and backends asked of a
// DalvDB server and what they were answered, and checks with Porcupine that
// each partition's history is linearizable against a model of the sync
// rules (see the README's "How it behaves"): versions are dense, a device's
// batch is applied at most once, a sync conflicts exactly when a key it
// writes changed after its base version, a backend commit with an expected
// version applies only at that version, and a read sees the state of one
// version. Ops are PUTs and DELETEs of scalar values and LIST_ADDs and
// LIST_REMOVEs of list elements; list ops on both sides of a key merge, a
// PUT or DELETE on either side conflicts. A call whose outcome the caller
// could not learn (a timeout, a cut connection) may have taken effect or not.
package history

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Outcome is what a call's caller learnt.
type Outcome int

const (
	// OK is an answer: accepted, committed, read.
	OK Outcome = iota
	// Conflict is a sync refused with status CONFLICT.
	Conflict
	// Stale is a backend commit refused for its expected version.
	Stale
	// Unknown is no answer: the call may or may not have taken effect.
	Unknown
)

func (o Outcome) String() string {
	return [...]string{"ok", "conflict", "stale", "unknown"}[o]
}

// Kind is what a call did.
type Kind int

const (
	// Sync is a device's sync of a batch of ops.
	Sync Kind = iota
	// Commit is a backend's commit of ops, with or without an expected
	// version.
	Commit
	// Get is a backend's read of some keys.
	Get
	// List is a backend's read of one page of the keys under a prefix.
	List
)

// Call is one call to the server and what came of it.
type Call struct {
	Partition string
	Kind      Kind
	// Device and Batch name a sync's batch; Base is its base version.
	Device string
	Batch  uint64
	Base   uint64
	// Expect says a commit has an expected version, Expected.
	Expect   bool
	Expected uint64
	// Key is a commit's idempotency key (empty for none): once a commit
	// under it applied, one under it again applies nothing and is answered
	// with the first one's version. Device and Batch then name the key as
	// well, its client and its place: a client sends its keys in the order
	// of Batch, so the model keeps, as for a device's batches, only each
	// client's last applied one.
	Key string
	// Ops are what a sync or commit asks, in order; Keys are the keys a get
	// reads, or those a list's page holds, in order.
	Ops  []Op
	Keys []string
	// Prefix and After say which keys a list reads: those under Prefix
	// after After (all of them when After is empty), in key order. More
	// says the page was not the last: the page holds the first of those
	// keys, and with More false all of them. A sync's answer with More is
	// cut in pages too: its Changes are those up to its Version, where the
	// device continues, short of the partition's version.
	Prefix string
	After  string
	More   bool
	// Changes are what a sync's answer (a pull's too) said of the keys
	// changed after Base, when Pulled: every such key once, with the
	// version that last changed it, in the order of those versions, own
	// ops included (with More, only those last changed up to Version). A
	// reset answer is not Pulled.
	Changes []Change
	Pulled  bool

	Outcome Outcome
	// Version is the answer's partition version (a sync's or a commit's,
	// or the version a get read).
	Version uint64
	// Values are what a get read, each as Show renders it (absent and
	// deleted keys are missing).
	Values map[string]string

	start, end int64
	client     int
}

// Change is a key as a sync's answer gives it: its value as Show renders
// it, or Deleted, and the version that last changed it.
type Change struct {
	Key     string
	Value   string
	Deleted bool
	Version uint64
}

// read reports whether c changes nothing: a get, a list, or a pull (a
// sync with no ops).
func (c Call) read() bool {
	return c.Kind == Get || c.Kind == List || c.Kind == Sync && len(c.Ops) == 0
}

// OpKind is what an op does to its key.
type OpKind int

const (
	// Put sets a scalar value.
	Put OpKind = iota
	// Delete removes the key's value (a tombstone).
	Delete
	// ListAdd adds an element to a list, at its end, unless present.
	ListAdd
	// ListRemove removes an element from a list, if present.
	ListRemove
)

// Op is one op of a sync or commit.
type Op struct {
	Kind  OpKind
	Key   string
	Value string // a PUT's value, or a list op's element
}

func (o Op) String() string {
	switch o.Kind {
	case Delete:
		return "del " + o.Key
	case ListAdd:
		return o.Key + "+=" + o.Value
	case ListRemove:
		return o.Key + "-=" + o.Value
	}
	return o.Key + "=" + o.Value
}

// Show renders a value as the model compares it: a scalar as itself, a
// list as its elements in brackets, in order.
func Show(scalar string, list []string, isList bool) string {
	if isList {
		return "[" + strings.Join(list, " ") + "]"
	}
	return scalar
}

// Recorder collects calls from concurrent clients.
type Recorder struct {
	epoch time.Time
	mu    sync.Mutex
	calls []Call
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder { return &Recorder{epoch: time.Now()} }

// Begin marks a call's start; pass what it returns to End.
func (r *Recorder) Begin() int64 { return int64(time.Since(r.epoch)) }

// End records c, begun at start by client (a number per device or backend).
func (r *Recorder) End(client int, start int64, c Call) {
	c.start, c.client = start, client
	c.end = int64(time.Since(r.epoch))
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

// Calls returns the calls recorded so far.
func (r *Recorder) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// Result is what Check found.
type Result struct {
	// Calls and Partitions count what was checked.
	Calls, Partitions int
	// Unknown counts the calls whose outcome was not known, and Open
	// those of them no later answer ruled out: they may take effect up to
	// the end of the history, and each widens the search.
	Unknown, Open int
	// Failed names the partitions whose history is not linearizable, with
	// their calls in order of start, each on a line.
	Failed map[string]string
	// Info is Porcupine's linearization info, for VisualizePath.
	Info porcupine.LinearizationInfo
}

// OK reports whether every partition's history was linearizable.
func (r Result) OK() bool { return len(r.Failed) == 0 }

// Check checks calls against the model, partition by partition, giving up
// after timeout (then the result is not OK).
func Check(calls []Call, timeout time.Duration) Result {
	ops := make([]porcupine.Operation, 0, len(calls))
	res := Result{Calls: len(calls), Failed: map[string]string{}}
	parts := map[string][]Call{}
	for _, c := range calls {
		parts[c.Partition] = append(parts[c.Partition], c)
	}
	for _, pc := range parts {
		for _, c := range pc {
			if c.Outcome == Unknown {
				res.Unknown++
				if c.read() {
					continue // a read that was not answered says nothing
				}
			}
			end := effectEnd(c, pc)
			if end == never {
				res.Open++
			}
			ops = append(ops, porcupine.Operation{ClientId: c.client, Input: c, Call: c.start, Output: c, Return: end})
		}
	}
	res.Partitions = len(parts)
	m := Model()
	for p, pc := range parts {
		var pops []porcupine.Operation
		for _, op := range ops {
			if op.Input.(Call).Partition == p {
				pops = append(pops, op)
			}
		}
		r, info := porcupine.CheckOperationsVerbose(m, pops, timeout)
		if r != porcupine.Ok {
			slices.SortFunc(pc, func(a, b Call) int { return int(a.start - b.start) })
			var b strings.Builder
			fmt.Fprintf(&b, "%s (%s):\n", p, r)
			for _, c := range pc {
				fmt.Fprintf(&b, "  %s\n", describe(c))
			}
			res.Failed[p] = b.String()
			res.Info = info
		}
	}
	return res
}

// effectEnd is the latest time at which c, one of its partition's calls pc,
// can still change the partition: its end when it was answered. A call
// without an answer may take effect at any time after its start, which
// makes Porcupine's search grow with each one, so its end is drawn in to
// the first answer that rules its effect out from then on:
//   - a sync of batch b by a device, once a sync of the same device with a
//     batch at or past b was accepted (a device's batch applies once, and
//     in order);
//   - a commit expecting version v, once any call was answered with a
//     version past v (versions only grow);
//   - a commit under an idempotency key, once one under the same key was
//     answered: applied, it was the one to apply; refused as stale, the
//     version has passed the one it expects.
//
// This changes no verdict: an unanswered call may also do nothing in any
// state, so a history that needs it to do nothing after that answer needs
// nothing of it there.
func effectEnd(c Call, pc []Call) int64 {
	if c.Outcome != Unknown {
		return c.end
	}
	end := never
	for _, o := range pc {
		if o.Outcome == Unknown || o.end >= end {
			continue
		}
		switch {
		case c.Kind == Sync && o.Kind == Sync && o.Device == c.Device && o.Outcome == OK && o.Batch >= c.Batch,
			c.Kind == Commit && c.Expect && (o.Outcome == OK || o.Outcome == Conflict) && o.Version > c.Expected,
			c.Kind == Commit && c.Key != "" && o.Kind == Commit && o.Key == c.Key && (o.Outcome == OK || o.Outcome == Stale):
			end = o.end
		}
	}
	return max(end, c.start)
}

// never is the end of a call that may take effect at any time.
const never = int64(1<<63 - 1)

// state is a partition as the model sees it.
type state struct {
	version uint64
	keys    map[string]entry        // the keys written, tombstones too
	batches map[string]batchApplied // by device, or by the client of commits' keys
}

// entry is a key as the store holds it: its value, the version that last
// changed it, and the version of its last PUT or DELETE (list ops conflict
// only with those).
type entry struct {
	scalar        string
	list          []string
	isList        bool
	deleted       bool
	version       uint64
	scalarVersion uint64
}

type batchApplied struct {
	batch, version uint64
}

// conflicts reports whether ops, based on base, meet a change after it:
// a PUT or DELETE meets any change of its key, a list op only a PUT or
// DELETE. A key never written meets nothing (the history keeps every
// tombstone).
func (s state) conflicts(ops []Op, base uint64) bool {
	for _, op := range ops {
		e, ok := s.keys[op.Key]
		switch {
		case !ok:
		case op.Kind == ListAdd || op.Kind == ListRemove:
			if e.scalarVersion > base {
				return true
			}
		case e.version > base:
			return true
		}
	}
	return false
}

// with returns the state after ops apply as the next commit, recording
// device's batch when device is set, or false when an op is refused (a list
// op on a scalar).
func (s state) with(ops []Op, device string, batch uint64) (state, bool) {
	n := state{version: s.version + 1, keys: maps.Clone(s.keys), batches: s.batches}
	for _, op := range ops {
		e := n.keys[op.Key]
		changed := true
		switch op.Kind {
		case Put:
			e.scalar, e.list, e.isList, e.deleted = op.Value, nil, false, false
		case Delete:
			e.scalar, e.list, e.isList, e.deleted = "", nil, false, true
		default:
			if !e.deleted && !e.isList && e.version > 0 {
				return s, false
			}
			at := slices.Index(e.list, op.Value)
			switch {
			case op.Kind == ListAdd && at < 0:
				e.list = append(slices.Clone(e.list), op.Value)
			case op.Kind == ListRemove && at >= 0:
				e.list = slices.Delete(slices.Clone(e.list), at, at+1)
			default:
				changed = false
			}
			if changed {
				e.isList, e.deleted = true, false
			}
		}
		if changed {
			e.version = n.version
			if op.Kind == Put || op.Kind == Delete {
				e.scalarVersion = n.version
			}
			n.keys[op.Key] = e
		}
	}
	if device != "" {
		n.batches = maps.Clone(s.batches)
		n.batches[device] = batchApplied{batch, n.version}
	}
	return n, true
}

// equal reports whether s and o are the same state. Porcupine compares
// states at every step, so this is the checker's hot path.
func (s state) equal(o state) bool {
	return s.version == o.version &&
		maps.EqualFunc(s.keys, o.keys, func(a, b entry) bool {
			return a.version == b.version && a.scalarVersion == b.scalarVersion && a.deleted == b.deleted &&
				a.isList == b.isList && a.scalar == b.scalar && slices.Equal(a.list, b.list)
		}) &&
		maps.Equal(s.batches, o.batches)
}

func (s state) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "v%d", s.version)
	for _, k := range slices.Sorted(maps.Keys(s.keys)) {
		e := s.keys[k]
		v := Show(e.scalar, e.list, e.isList)
		if e.deleted {
			v = "(deleted)"
		}
		fmt.Fprintf(&b, " %s=%s@%d/%d", k, v, e.version, e.scalarVersion)
	}
	for _, d := range slices.Sorted(maps.Keys(s.batches)) {
		fmt.Fprintf(&b, " %s#%d@%d", d, s.batches[d].batch, s.batches[d].version)
	}
	return b.String()
}

// step returns the states s may be in after c (none when c cannot follow s).
func step(s state, c Call) []state {
	switch c.Kind {
	case Get:
		if c.Outcome == Unknown {
			return []state{s}
		}
		if c.Version != s.version {
			return nil
		}
		for _, k := range c.Keys {
			e, ok := s.keys[k]
			ok = ok && !e.deleted
			v, got := c.Values[k]
			if ok != got || ok && Show(e.scalar, e.list, e.isList) != v {
				return nil
			}
		}
		return []state{s}
	case List:
		if c.Outcome == Unknown {
			return []state{s}
		}
		if c.Version != s.version {
			return nil
		}
		live := s.live(c.Prefix, c.After)
		if len(live) < len(c.Keys) || !c.More && len(live) != len(c.Keys) {
			return nil
		}
		for i, k := range c.Keys {
			e := s.keys[k]
			if live[i] != k || Show(e.scalar, e.list, e.isList) != c.Values[k] {
				return nil
			}
		}
		return []state{s}
	case Commit:
		device := ""
		if c.Key != "" {
			if next, ok := appliedBefore(s, c); ok {
				return next
			}
			device = c.Device
		}
		if c.Expect && c.Expected != s.version {
			if c.Outcome == Stale || c.Outcome == Unknown {
				return []state{s}
			}
			return nil
		}
		return applies(s, c, device)
	default: // Sync
		if len(c.Ops) == 0 { // a pull: a read of the changes after its base
			if c.Outcome == Unknown || s.answers(c) {
				return []state{s}
			}
			return nil
		}
		if next, ok := appliedBefore(s, c); ok {
			return next
		}
		if s.conflicts(c.Ops, c.Base) {
			if c.Outcome == Unknown || c.Outcome == Conflict && s.answers(c) {
				return []state{s}
			}
			return nil
		}
		return applies(s, c, c.Device)
	}
}

// answers reports whether c's answer is one s gives: its version s's, or,
// when c was cut in pages (More), a version short of s's; and, when c is
// Pulled, its changes what s holds of every key last changed after c.Base
// (and with More, up to c.Version): each once, with the version that last
// changed it and its value (or deleted), in the order of those versions.
func (s state) answers(c Call) bool {
	if c.More && c.Version >= s.version || !c.More && c.Version != s.version {
		return false
	}
	if !c.Pulled {
		return true
	}
	in := func(e entry) bool { return e.version > c.Base && (!c.More || e.version <= c.Version) }
	seen := make(map[string]bool, len(c.Changes))
	var last uint64
	for _, ch := range c.Changes {
		e, ok := s.keys[ch.Key]
		if !ok || seen[ch.Key] || !in(e) || e.version != ch.Version || ch.Version < last ||
			e.deleted != ch.Deleted || !e.deleted && Show(e.scalar, e.list, e.isList) != ch.Value {
			return false
		}
		seen[ch.Key], last = true, ch.Version
	}
	n := 0
	for _, e := range s.keys {
		if in(e) {
			n++
		}
	}
	return n == len(c.Changes)
}

// live returns the keys s holds (not deleted) under prefix and after
// after, in key order.
func (s state) live(prefix, after string) []string {
	var out []string
	for k, e := range s.keys {
		if !e.deleted && strings.HasPrefix(k, prefix) && k > after {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// appliedBefore returns the states after c when its batch (or its commit's
// key) applied before, as it or as a later one of its device: nothing
// applies, and the answer is as for the first success, the version that
// commit took for a backend's commit, a version since then for a sync.
func appliedBefore(s state, c Call) ([]state, bool) {
	b, ok := s.batches[c.Device]
	if !ok || c.Batch > b.batch {
		return nil, false
	}
	answered := c.Outcome == OK && c.Batch == b.batch
	switch {
	case c.Kind == Commit:
		answered = answered && c.Version == b.version
	case c.Pulled || c.More:
		// The answer is a pull from the head it read.
		answered = answered && s.answers(c)
	default:
		answered = answered && c.Version >= b.version && c.Version <= s.version
	}
	if c.Outcome == Unknown || answered {
		return []state{s}, true
	}
	return nil, true
}

// applies returns the states after c, whose ops apply in s as the next
// commit (of device's batch when device is set): that commit's state when c
// was answered with its version, either s or it when c got no answer, none
// when c was answered otherwise or its ops cannot apply.
func applies(s state, c Call, device string) []state {
	next, ok := s.with(c.Ops, device, c.Batch)
	switch {
	case !ok:
		if c.Outcome == Unknown {
			return []state{s}
		}
		return nil
	case c.Outcome == OK && next.answers(c):
		return []state{next}
	case c.Outcome == Unknown:
		return []state{s, next}
	}
	return nil
}

// Model is the sync rules as a Porcupine model of one partition.
func Model() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Init: func() []any {
			return []any{state{keys: map[string]entry{}, batches: map[string]batchApplied{}}}
		},
		Step: func(st, in, _ any) []any {
			var out []any
			for _, n := range step(st.(state), in.(Call)) {
				out = append(out, n)
			}
			return out
		},
		Equal:             func(a, b any) bool { return a.(state).equal(b.(state)) },
		DescribeOperation: func(in, _ any) string { return describe(in.(Call)) },
		DescribeState:     func(st any) string { return st.(state).String() },
	}
	return nm.ToModel()
}

// describe is a call on one line.
func describe(c Call) string {
	kv := func(m map[string]string) string {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(m)) {
			parts = append(parts, k+"="+m[k])
		}
		return strings.Join(parts, ",")
	}
	ops := func(ops []Op) string {
		parts := make([]string, len(ops))
		for i, op := range ops {
			parts[i] = op.String()
		}
		return strings.Join(parts, ",")
	}
	at := fmt.Sprintf("[%.3fms-%.3fms]", float64(c.start)/1e6, float64(c.end)/1e6)
	switch c.Kind {
	case Get:
		return fmt.Sprintf("%s get %v -> %s v%d %s", at, c.Keys, c.Outcome, c.Version, kv(c.Values))
	case List:
		return fmt.Sprintf("%s list %q after %q -> %s v%d %v more=%v %s", at, c.Prefix, c.After, c.Outcome, c.Version, c.Keys, c.More, kv(c.Values))
	case Commit:
		expect := "any"
		if c.Expect {
			expect = fmt.Sprint(c.Expected)
		}
		key := ""
		if c.Key != "" {
			key = " key=" + c.Key
		}
		return fmt.Sprintf("%s commit expect=%s%s %s -> %s v%d", at, expect, key, ops(c.Ops), c.Outcome, c.Version)
	}
	changes := ""
	if c.Pulled {
		parts := make([]string, len(c.Changes))
		for i, ch := range c.Changes {
			v := ch.Value
			if ch.Deleted {
				v = "(deleted)"
			}
			parts[i] = fmt.Sprintf("%s=%s@%d", ch.Key, v, ch.Version)
		}
		changes = " changes " + strings.Join(parts, ",")
	}
	if c.More {
		changes += " more"
	}
	if len(c.Ops) == 0 {
		return fmt.Sprintf("%s pull %s base=%d -> %s v%d%s", at, c.Device, c.Base, c.Outcome, c.Version, changes)
	}
	return fmt.Sprintf("%s sync %s#%d base=%d %s -> %s v%d%s", at, c.Device, c.Batch, c.Base, ops(c.Ops), c.Outcome, c.Version, changes)
}

// saved is a call as Save writes it: its fields and its place in time.
type saved struct {
	Call
	Start, End int64
	Client     int
}

// Save writes calls to path as JSON, so that a history a check could not
// decide, or found broken, can be checked again (Load, Check) with more
// time or more logging.
func Save(path string, calls []Call) error {
	out := make([]saved, len(calls))
	for i, c := range calls {
		out[i] = saved{Call: c, Start: c.start, End: c.end, Client: c.client}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Load reads calls that Save wrote.
func Load(path string) ([]Call, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var in []saved
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	calls := make([]Call, len(in))
	for i, s := range in {
		calls[i] = s.Call
		calls[i].start, calls[i].end, calls[i].client = s.Start, s.End, s.Client
	}
	return calls, nil
}
