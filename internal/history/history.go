// Package history records what concurrent devices and backends asked of a
// DalvDB server and what they were answered, and checks with Porcupine that
// each partition's history is linearizable against a model of the sync
// rules (see the README's "How it behaves"): versions are dense, a device's
// batch is applied at most once, a sync conflicts exactly when a key it
// writes changed after its base version, a backend commit with an expected
// version applies only at that version, and a read sees the state of one
// version. A call whose outcome the caller could not learn (a timeout, a cut
// connection) may have taken effect or not.
package history

import (
	"fmt"
	"maps"
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
	// Sync is a device's sync of a batch of PUTs.
	Sync Kind = iota
	// Commit is a backend's commit of PUTs, with or without an expected
	// version.
	Commit
	// Get is a backend's read of some keys.
	Get
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
	// Puts are the keys a sync or commit writes, with their values; Keys
	// are the keys a get reads.
	Puts map[string]string
	Keys []string

	Outcome Outcome
	// Version is the answer's partition version (a sync's or a commit's,
	// or the version a get read).
	Version uint64
	// Values are what a get read (absent keys are missing).
	Values map[string]string

	start, end int64
	client     int
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
	// Unknown counts the calls whose outcome was not known.
	Unknown int
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
				if c.Kind == Get {
					continue // a read that was not answered says nothing
				}
			}
			ops = append(ops, porcupine.Operation{ClientId: c.client, Input: c, Call: c.start, Output: c, Return: effectEnd(c, pc)})
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
//     version past v (versions only grow).
//
// This changes no verdict: an unanswered call may also do nothing in any
// state, so a history that needs it to do nothing after that answer needs
// nothing of it there.
func effectEnd(c Call, pc []Call) int64 {
	if c.Outcome != Unknown {
		return c.end
	}
	end := int64(1<<63 - 1)
	for _, o := range pc {
		if o.Outcome == Unknown || o.end >= end {
			continue
		}
		switch {
		case c.Kind == Sync && o.Kind == Sync && o.Device == c.Device && o.Outcome == OK && o.Batch >= c.Batch,
			c.Kind == Commit && c.Expect && (o.Outcome == OK || o.Outcome == Conflict) && o.Version > c.Expected:
			end = o.end
		}
	}
	return max(end, c.start)
}

// state is a partition as the model sees it.
type state struct {
	version uint64
	keys    map[string]entry        // the keys written, with their last version
	batches map[string]batchApplied // by device
}

type entry struct {
	value   string
	version uint64
}

type batchApplied struct {
	batch, version uint64
}

func (s state) with(puts map[string]string, device string, batch uint64) state {
	n := state{version: s.version + 1, keys: maps.Clone(s.keys), batches: s.batches}
	for k, v := range puts {
		n.keys[k] = entry{v, n.version}
	}
	if device != "" {
		n.batches = maps.Clone(s.batches)
		n.batches[device] = batchApplied{batch, n.version}
	}
	return n
}

func (s state) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "v%d", s.version)
	for _, k := range slices.Sorted(maps.Keys(s.keys)) {
		fmt.Fprintf(&b, " %s=%s@%d", k, s.keys[k].value, s.keys[k].version)
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
			v, got := c.Values[k]
			if ok != got || ok && e.value != v {
				return nil
			}
		}
		return []state{s}
	case Commit:
		if c.Expect && c.Expected != s.version {
			if c.Outcome == Stale || c.Outcome == Unknown {
				return []state{s}
			}
			return nil
		}
		return applies(s, s.with(c.Puts, "", 0), c)
	default: // Sync
		if b, ok := s.batches[c.Device]; ok && c.Batch <= b.batch {
			// Applied before: nothing applies, and the answer is as for
			// the first success.
			if c.Outcome == Unknown || c.Outcome == OK && c.Batch == b.batch && c.Version >= b.version && c.Version <= s.version {
				return []state{s}
			}
			return nil
		}
		conflict := false
		for k := range c.Puts {
			if e, ok := s.keys[k]; ok && e.version > c.Base {
				conflict = true
			}
		}
		if conflict {
			if c.Outcome == Unknown || c.Outcome == Conflict && c.Version == s.version {
				return []state{s}
			}
			return nil
		}
		return applies(s, s.with(c.Puts, c.Device, c.Batch), c)
	}
}

// applies returns the states after c, which applies and leaves next when
// it takes effect: next when it was answered with next's version, either
// when it got no answer, none when it was answered otherwise.
func applies(s, next state, c Call) []state {
	switch {
	case c.Outcome == OK && c.Version == next.version:
		return []state{next}
	case c.Outcome == Unknown:
		return []state{s, next}
	}
	return nil
}

// Model is the sync rules as a Porcupine model of one partition.
func Model() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Init: func() []any { return []any{state{keys: map[string]entry{}, batches: map[string]batchApplied{}}} },
		Step: func(st, in, _ any) []any {
			var out []any
			for _, n := range step(st.(state), in.(Call)) {
				out = append(out, n)
			}
			return out
		},
		Equal:             func(a, b any) bool { return a.(state).String() == b.(state).String() },
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
	at := fmt.Sprintf("[%.3fms-%.3fms]", float64(c.start)/1e6, float64(c.end)/1e6)
	switch c.Kind {
	case Get:
		return fmt.Sprintf("%s get %v -> %s v%d %s", at, c.Keys, c.Outcome, c.Version, kv(c.Values))
	case Commit:
		expect := "any"
		if c.Expect {
			expect = fmt.Sprint(c.Expected)
		}
		return fmt.Sprintf("%s commit expect=%s %s -> %s v%d", at, expect, kv(c.Puts), c.Outcome, c.Version)
	}
	return fmt.Sprintf("%s sync %s#%d base=%d %s -> %s v%d", at, c.Device, c.Batch, c.Base, kv(c.Puts), c.Outcome, c.Version)
}
