package engine

import (
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/rules"
	"github.com/dalvdb/dalv/store"
)

// SetRules replaces the write rules every later sync and commit is checked
// against; nil means no rules (only the system prefixes restrict writes).
// The system prefixes that end in "/" become rules of their own (writer:
// backend) beside s's; the prefix check still runs first. Syncs and commits
// under way keep the rules they started with.
func (e *Engine) SetRules(s *rules.Set) {
	if s != nil {
		if withSys, err := s.WithSystemPrefixes(e.sys); err == nil {
			s = withSys
		}
	}
	e.rules.Store(s)
}

// Rules returns the write rules in force, the system prefixes' among them;
// nil when there are none.
func (e *Engine) Rules() *rules.Set { return e.rules.Load() }

// writeCheck checks each op of one sync or commit against the rules, with
// the key's value as the earlier ops of the same batch left it. A nil
// *writeCheck checks nothing.
type writeCheck struct {
	set    *rules.Set
	writer rules.Writer
	user   string
	claims map[string]any
}

// writeCheck returns the check for writes to p by writer, nil when the
// engine has no rules.
func (e *Engine) writeCheck(p store.Partition, writer rules.Writer, claims map[string]any) *writeCheck {
	s := e.rules.Load()
	if s == nil {
		return nil
	}
	return &writeCheck{set: s, writer: writer, user: p.Name, claims: claims}
}

// op checks op, which takes its key from old to next (nil when absent).
func (c *writeCheck) op(op *dalvv1.Op, old, next *dalvv1.Value) error {
	if c == nil {
		return nil
	}
	return c.set.Check(rules.NewWrite(op, old, next, c.writer, c.user, c.claims))
}
