package engine

import (
	"context"
	"errors"
	"strings"
	"testing"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/rules"
)

const engineRules = `
rules:
  - match: "cart/qty/*"
    kind: json
    schema: {type: integer, minimum: 1}
    check: "value <= 99"
  - match: "profile"
    kind: json
    check: "old == null || value.createdAt == old.createdAt"
    delete: false
  - match: "inbox/*"
    check: "key.endsWith(user) && claims.plan == 'pro'"
  - match: "sys/orders/*"
    writer: backend
    kind: json
  - match: "sys/raw/*"
    writer: backend
    kind: json
    backend_trusted: true
`

func rulesEngine(t *testing.T) *Engine {
	t.Helper()
	e, _ := newEngine(t, Limits{})
	s, err := rules.Parse([]byte(engineRules))
	if err != nil {
		t.Fatal(err)
	}
	e.SetRules(s)
	return e
}

func TestSyncChecksRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := rulesEngine(t)
	p := user("u1")
	batch := uint64(0)
	var head func() uint64
	sync := func(claims map[string]any, ops ...*dalvv1.Op) error {
		batch++
		resp, err := e.Sync(ctx, SyncRequest{Partition: p, DeviceID: "d", BaseVersion: head(), Batch: batch, Ops: ops, Claims: claims})
		if err == nil && resp.GetStatus() != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED {
			t.Fatalf("status %v", resp.GetStatus())
		}
		return err
	}
	head = func() uint64 {
		v, _, err := e.Get(ctx, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if err := sync(nil, putOp("cart/qty/a", "3"), putOp("profile", `{"createdAt":1}`)); err != nil {
		t.Fatalf("good sync: %v", err)
	}
	v := head()
	for name, c := range map[string]struct {
		ops    []*dalvv1.Op
		claims map[string]any
		kind   error
		rule   string
	}{
		"schema":           {[]*dalvv1.Op{putOp("cart/qty/b", "2"), putOp("cart/qty/a", "0")}, nil, rules.ErrInvalid, "cart/qty/*"},
		"check":            {[]*dalvv1.Op{putOp("cart/qty/a", "100")}, nil, rules.ErrInvalid, "cart/qty/*"},
		"old from store":   {[]*dalvv1.Op{putOp("profile", `{"createdAt":2}`)}, nil, rules.ErrInvalid, "profile"},
		"old within batch": {[]*dalvv1.Op{putOp("cart/qty/c", "1"), delOp("profile"), putOp("profile", `{"createdAt":1}`)}, nil, rules.ErrPermission, "profile"},
		"claims":           {[]*dalvv1.Op{putOp("inbox/u1", "1")}, map[string]any{"plan": "free"}, rules.ErrInvalid, "inbox/*"},
		"writer":           {[]*dalvv1.Op{putOp("cart/qty/c", "1"), putOp("sys/orders/1", "{}")}, nil, ErrPermission, ""},
	} {
		err := sync(c.claims, c.ops...)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.rule) {
			t.Errorf("%s: got %v, want %v naming %q", name, err, c.kind, c.rule)
		}
	}
	if got := head(); got != v {
		t.Fatalf("refused syncs changed the partition: version %d, was %d", got, v)
	}
	// old is the value the batch's earlier ops left: a PUT then a PUT that
	// keeps createdAt passes only if the check sees the first PUT's value.
	e2 := rulesEngine(t)
	_, err := e2.Sync(ctx, SyncRequest{Partition: p, DeviceID: "d", Batch: 1, Ops: []*dalvv1.Op{
		putOp("profile", `{"createdAt":5}`), putOp("profile", `{"createdAt":5,"name":"x"}`)}})
	if err != nil {
		t.Fatalf("old within a batch: %v", err)
	}
	_, err = e2.Sync(ctx, SyncRequest{Partition: p, DeviceID: "d", BaseVersion: 1, Batch: 2, Ops: []*dalvv1.Op{
		putOp("profile", `{"createdAt":5,"name":"y"}`), putOp("profile", `{"createdAt":6}`)}})
	if !errors.Is(err, rules.ErrInvalid) {
		t.Fatalf("second op against the first's value: %v", err)
	}
	if err := sync(map[string]any{"plan": "pro"}, putOp("inbox/u1", "1")); err != nil {
		t.Fatalf("claims pro: %v", err)
	}
}

func TestCommitChecksRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := rulesEngine(t)
	p := user("u1")
	if _, err := e.Commit(ctx, p, []*dalvv1.Op{putOp("sys/orders/1", `{"n":1}`)}, CommitOptions{}); err != nil {
		t.Fatalf("backend writes a backend key: %v", err)
	}
	_, err := e.Commit(ctx, p, []*dalvv1.Op{putOp("sys/raw/1", "x"), putOp("sys/orders/2", "not json")}, CommitOptions{})
	if !errors.Is(err, rules.ErrInvalid) || !strings.Contains(err.Error(), "sys/orders/*") {
		t.Fatalf("backend commit of a bad value: %v", err)
	}
	if _, err := e.Commit(ctx, p, []*dalvv1.Op{putOp("sys/raw/1", "x")}, CommitOptions{}); err != nil {
		t.Fatalf("backend_trusted: %v", err)
	}
	e.SetRules(nil)
	if _, err := e.Commit(ctx, p, []*dalvv1.Op{putOp("sys/orders/2", "not json")}, CommitOptions{}); err != nil {
		t.Fatalf("no rules: %v", err)
	}
}
