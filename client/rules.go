package client

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/rules"
	"github.com/dalvdb/dalv/value"
)

// compiledRules compiles the write rules GetConfig sent, with the package
// the server uses. It is nil when the server has none, or when they do not
// compile here (a newer server's format): the server still checks every
// write then.
func compiledRules(m *dalvv1.GetConfigResponse) *rules.Set {
	if m.GetRules() == "" {
		return nil
	}
	s, err := rules.Parse([]byte(m.GetRules()))
	if err != nil {
		return nil
	}
	return s
}

// checkRules refuses a local write the server's rules would refuse: op
// takes its key from cur to next. The error wraps a *rules.Error, which
// names the rule and wraps rules.ErrPermission or rules.ErrInvalid. Checks
// that read the token's claims are left to the server.
func (c *config) checkRules(op *Op, cur, next *Value) error {
	if c.rules == nil {
		return nil
	}
	w := rules.NewWrite(op, cur, next, rules.Device, c.user, nil)
	w.ClaimsUnknown = true
	if err := c.rules.Check(w); err != nil {
		return fmt.Errorf("write %q: %w", op.GetKey(), err)
	}
	return nil
}

// syncChecked sends the head batch b unless the rules in force now refuse
// it (they may have changed since it was queued): then it answers with the
// refusal the server would give, so the batch is set aside and reported as
// a server refusal is, never sent and never silently dropped.
func (r *Replica) syncChecked(ctx context.Context, b *batch, req *dalvv1.SyncRequest) (*dalvv1.SyncResponse, error) {
	// The token's first use fetches the server's config, and with it the
	// rules in force; a verified token costs nothing here.
	if err := r.withToken(ctx, func(context.Context, string) error { return nil }); err != nil {
		return nil, err
	}
	if err := r.rulesRefusal(b); err != nil {
		code := connect.CodeInvalidArgument
		if errors.Is(err, rules.ErrPermission) {
			code = connect.CodePermissionDenied
		}
		return nil, connect.NewError(code, err)
	}
	return r.rpcSync(ctx, req)
}

// rulesRefusal checks b's ops in order against the rules in force, each on
// the value the server last confirmed as the batch's earlier ops leave it.
func (r *Replica) rulesRefusal(b *batch) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	c := r.cfg
	if c.rules == nil {
		return nil
	}
	vals := make(map[string]*Value)
	for _, op := range b.ops {
		k := op.GetKey()
		cur, ok := vals[k]
		if !ok {
			if p := r.pend[k]; p != nil {
				cur = p.base
			}
		}
		next, changed, err := value.Apply(cur, op)
		if err != nil {
			return nil // the server reports what the op's state does not allow
		}
		if !changed {
			next = cur
		}
		if err := c.checkRules(op, cur, next); err != nil {
			return err
		}
		vals[k] = next
	}
	return nil
}
