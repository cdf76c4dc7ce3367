package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/client"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/rules"
)

// shopRules are the shop's write rules. The system prefix is moved out of
// the way (--system-prefix internal/) so sys/ keys are governed by the
// rules alone.
const shopRules = `
default: allow
rules:
  - match: "prefs/*"
    kind: json
    schema: {type: string, maxLength: 32}
  - match: "cart/qty/*"
    kind: json
    schema: {type: integer, minimum: 1}
    check: "value <= 99"
  - match: "profile"
    kind: json
    schema: {type: object, required: [name, createdAt], properties: {name: {type: string}, createdAt: {type: integer}}}
    check: "old == null || value.createdAt == old.createdAt"
    delete: false
  - match: "saved"
    kind: list
    max_items: 3
    schema: {type: string}
  - match: "search/history"
    kind: list
    max_items: 2
    max_bytes: 64
  - match: "following/*"
    kind: json
    schema: {type: boolean}
    check: "key != 'following/' + user"
  - match: "sys/orders/*"
    writer: backend
    kind: json
    schema: {type: object, required: [total], properties: {total: {type: integer, minimum: 0}}}
  - match: "sys/followers/*"
    writer: backend
    create_only: true
  - match: "sys/timeline"
    writer: backend
    kind: list
    max_items: 100
  - match: "sys/**"
    writer: backend
  - match: "catalog/*"
    writer: backend
    kind: json
    schema: {type: object, required: [price], properties: {price: {type: number, minimum: 0}}}
`

type ruleCase struct {
	name string
	op   *dalvv1.Op
	code string // "ok", "invalid_argument" or "permission_denied"
	rule string
}

// deviceRuleCases run in order, each both through the SDK's local check
// and through the server; allowed ones change both states alike.
var deviceRuleCases = []ruleCase{
	{"prefs ok", opPut("prefs/theme", `"dark"`), "ok", ""},
	{"prefs too long", opPut("prefs/theme", `"`+strings.Repeat("x", 40)+`"`), "invalid_argument", "prefs/*"},
	{"prefs not json", opPut("prefs/lang", `en`), "invalid_argument", "prefs/*"},
	{"cart ok", opPut("cart/qty/sku1", "3"), "ok", ""},
	{"cart over 99", opPut("cart/qty/sku1", "100"), "invalid_argument", "cart/qty/*"},
	{"cart negative", opPut("cart/qty/sku2", "-5"), "invalid_argument", "cart/qty/*"},
	{"profile ok", opPut("profile", `{"name":"Ann B","createdAt":1}`), "ok", ""},
	{"profile createdAt changed", opPut("profile", `{"name":"Ann","createdAt":2}`), "invalid_argument", "profile"},
	{"profile without name", opPut("profile", `{"createdAt":1}`), "invalid_argument", "profile"},
	{"profile deleted", opDelete("profile"), "permission_denied", "profile"},
	{"saved full", opAdd("saved", `"d"`), "invalid_argument", "saved"},
	{"saved remove", opRemove("saved", `"a"`), "ok", ""},
	{"saved not a string", opAdd("saved", `5`), "invalid_argument", "saved"},
	{"saved add", opAdd("saved", `"d"`), "ok", ""},
	{"saved as scalar", opPut("saved", `"x"`), "invalid_argument", "saved"},
	{"search ok", opAdd("search/history", `shoes`), "ok", ""},
	{"search too many", opPutList("search/history", "a", "b", "c"), "invalid_argument", "search/history"},
	{"search too big", opAdd("search/history", strings.Repeat("y", 70)), "invalid_argument", "search/history"},
	{"follow ok", opPut("following/bob", "true"), "ok", ""},
	{"follow self", opPut("following/ann", "true"), "invalid_argument", "following/*"},
	{"follow not bool", opPut("following/cy", `"yes"`), "invalid_argument", "following/*"},
	{"orders device", opPut("sys/orders/9", `{"total":1}`), "permission_denied", "sys/orders/*"},
	{"followers device", opPut("sys/followers/zed", "1"), "permission_denied", "sys/followers/*"},
	{"timeline device", opAdd("sys/timeline", "p1"), "permission_denied", "sys/timeline"},
	{"other sys device", opPut("sys/misc", "1"), "permission_denied", "sys/**"},
	{"unmatched", opPut("notes/1", "anything"), "ok", ""},
}

// writeRules replaces the rules file at path in one rename, so the server's
// polling never reads it half written.
func writeRules(t *testing.T, path, src string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func rulesHash(t *testing.T, d dalvv1connect.ClientServiceClient) string {
	t.Helper()
	resp, err := d.GetConfig(ctx(t), connect.NewRequest(&dalvv1.GetConfigRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetRulesHash()
}

func partitionVersion(t *testing.T, b dalvv1connect.BackendServiceClient, user, shared string) uint64 {
	t.Helper()
	resp, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: user, Shared: shared, Keys: []string{"x"}}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetVersion()
}

func TestRulesShop(t *testing.T) {
	t.Parallel()
	runRulesShop(t, func(args ...string) *proc.Server { return startServer(t, args...) })
}

// TestRulesShopPostgres is TestRulesShop on a node over PostgreSQL.
func TestRulesShopPostgres(t *testing.T) {
	t.Parallel()
	runRulesShop(t, func(args ...string) *proc.Server {
		nodes, _ := pgNodes(t, pgtest.Server(t), 1, args...)
		return nodes[0]
	})
}

func runRulesShop(t *testing.T, start func(args ...string) *proc.Server) {
	dir := t.TempDir()
	file := filepath.Join(dir, "rules.yaml")
	writeRules(t, file, shopRules)
	srv := start("--rules", file, "--rules-poll", "50ms", "--system-prefix", "internal/", "--shared", "catalog")
	b := backendClient(t, srv)
	commit := func(user, shared string, o ...*dalvv1.Op) error {
		_, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: user, Shared: shared, Ops: o}))
		return err
	}
	if err := commit("ann", "", opPut("profile", `{"name":"Ann","createdAt":1}`), opPutList("saved", `"a"`, `"b"`, `"c"`)); err != nil {
		t.Fatalf("seed: %v", err)
	}

	// The SDK: GetConfig brings the rules; the seed is pulled.
	r, err := client.Open(filepath.Join(dir, "ann.dalv"), client.Options{ServerURL: srv.URL(),
		TokenSource: func(context.Context) (string, error) { return token(t, "ann"), nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Sync(ctx(t)); err != nil {
		t.Fatalf("sdk sync: %v", err)
	}

	d := deviceClient(t, srv, "ann")
	batch := uint64(0)
	for _, c := range deviceRuleCases {
		// The SDK's local check.
		err := r.Update(func(tx *client.Tx) error { return applyTx(tx, c.op) })
		checkRefusal(t, "sdk "+c.name, err, c)
		// The server.
		before := partitionVersion(t, b, "ann", "")
		batch++
		_, err = d.Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "dev1", BaseVersion: before, Batch: batch, Ops: ops(c.op)}))
		checkRefusal(t, "server "+c.name, err, c)
		if c.code != "ok" {
			if after := partitionVersion(t, b, "ann", ""); after != before {
				t.Errorf("server %s: refused sync moved the partition from %d to %d", c.name, before, after)
			}
		}
	}

	// A batch with a good op and a bad op applies nothing.
	before := partitionVersion(t, b, "ann", "")
	batch++
	_, err = d.Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "dev1", BaseVersion: before, Batch: batch,
		Ops: ops(opPut("prefs/lang", `"en"`), opPut("cart/qty/sku3", "0"))}))
	checkRefusal(t, "mixed batch", err, ruleCase{code: "invalid_argument", rule: "cart/qty/*"})
	if after := partitionVersion(t, b, "ann", ""); after != before {
		t.Fatalf("mixed batch moved the partition from %d to %d", before, after)
	}
	err = r.Update(func(tx *client.Tx) error {
		if err := tx.Put("prefs/lang", []byte(`"en"`)); err != nil {
			return err
		}
		return tx.Put("cart/qty/sku3", []byte("0"))
	})
	checkRefusal(t, "sdk mixed batch", err, ruleCase{code: "invalid_argument", rule: "cart/qty/*"})
	if _, err := r.Get("prefs/lang"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("sdk mixed batch left prefs/lang: %v", err)
	}

	// Backends are checked too, unless a rule trusts them.
	for _, c := range []struct {
		name, user, shared string
		op                 *dalvv1.Op
		code, rule         string
	}{
		{"order ok", "ann", "", opPut("sys/orders/1", `{"total":10}`), "ok", ""},
		{"order bad", "ann", "", opPut("sys/orders/2", `{"total":-1}`), "invalid_argument", "sys/orders/*"},
		{"follower ok", "ann", "", opPut("sys/followers/bob", "1"), "ok", ""},
		{"follower twice", "ann", "", opPut("sys/followers/bob", "2"), "permission_denied", "sys/followers/*"},
		{"timeline ok", "ann", "", opAdd("sys/timeline", "p1"), "ok", ""},
		{"timeline scalar", "ann", "", opPut("sys/timeline", "p1"), "invalid_argument", "sys/timeline"},
		{"catalog ok", "", "catalog", opPut("catalog/sku1", `{"price":5}`), "ok", ""},
		{"catalog bad", "", "catalog", opPut("catalog/sku2", `{"price":-1}`), "invalid_argument", "catalog/*"},
	} {
		before := partitionVersion(t, b, c.user, c.shared)
		err := commit(c.user, c.shared, c.op)
		checkRefusal(t, "backend "+c.name, err, ruleCase{code: c.code, rule: c.rule})
		if c.code != "ok" && partitionVersion(t, b, c.user, c.shared) != before {
			t.Errorf("backend %s: refused commit changed the partition", c.name)
		}
	}

	// A queued write the tightened rules refuse is set aside and reported:
	// by the server for r, which sends it under the rules it knew; by the
	// SDK itself for r2, which is reopened and fetches the new rules before
	// sending.
	if err := r.Update(func(tx *client.Tx) error { return tx.Put("cart/qty/sku5", []byte("50")) }); err != nil {
		t.Fatalf("queue 50 under the old rules: %v", err)
	}
	r2path := filepath.Join(dir, "ann2.dalv")
	r2opts := client.Options{ServerURL: srv.URL(), TokenSource: func(context.Context) (string, error) { return token(t, "ann"), nil }}
	r2, err := client.Open(r2path, r2opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Sync(ctx(t)); err != nil {
		t.Fatalf("r2 sync: %v", err)
	}
	if err := r2.Update(func(tx *client.Tx) error { return tx.Put("cart/qty/sku6", []byte("50")) }); err != nil {
		t.Fatalf("r2 queue 50 under the old rules: %v", err)
	}
	if err := r2.Close(); err != nil {
		t.Fatal(err)
	}
	oldHash := rulesHash(t, d)
	writeRules(t, file, strings.Replace(shopRules, "value <= 99", "value <= 10", 1))
	if err := syscall.Kill(srv.PID(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	wait.ForEvery(t, 10*time.Second, 20*time.Millisecond, func() error {
		if rulesHash(t, d) == oldHash {
			return errors.New("rules hash unchanged after SIGHUP")
		}
		return nil
	})
	newHash := rulesHash(t, d)
	before = partitionVersion(t, b, "ann", "")
	batch++
	_, err = d.Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "dev1", BaseVersion: before, Batch: batch, Ops: ops(opPut("cart/qty/sku1", "20"))}))
	checkRefusal(t, "tightened", err, ruleCase{code: "invalid_argument", rule: "cart/qty/*"})
	if err := r.Sync(ctx(t)); err != nil {
		t.Fatalf("sdk sync after reload: %v", err)
	}
	refused, err := r.Refused()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, rb := range refused {
		if len(rb.Ops) == 1 && rb.Ops[0].GetKey() == "cart/qty/sku5" && strings.Contains(rb.Message, `"cart/qty/*"`) {
			found = true
		}
	}
	if !found {
		t.Fatalf("the queued write the new rules refuse was not set aside: %v", refused)
	}
	if r2, err = client.Open(r2path, r2opts); err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if err := r2.Sync(ctx(t)); err != nil {
		t.Fatalf("r2 sync after reload: %v", err)
	}
	refused, err = r2.Refused()
	if err != nil {
		t.Fatal(err)
	}
	// The SDK's refusal starts with the write it refuses; the server's
	// does not.
	if len(refused) != 1 || !strings.HasPrefix(refused[0].Message, `write "cart/qty/sku6": key "cart/qty/sku6" refused by rule "cart/qty/*"`) || refused[0].Code != "invalid_argument" {
		t.Fatalf("r2's queued write was not set aside by the SDK's check: %+v", refused)
	}
	if _, err := r2.Get("cart/qty/sku6"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("r2 still shows the refused write: %v", err)
	}

	// A broken file is refused and the rules in force stay.
	writeRules(t, file, "rules:\n  - match: \"cart/qty/*\"\n    check: \"value <\"\n")
	// The file's change is noticed by polling; wait for the failure.
	wait.ForEvery(t, 10*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(srv.Stderr(), "rules reload failed") {
			return errors.New("no reload failure logged")
		}
		return nil
	})
	if !strings.Contains(srv.Stderr(), "rules line 3") {
		t.Errorf("the reload failure does not give the line:\n%s", srv.Stderr())
	}
	if got := rulesHash(t, d); got != newHash {
		t.Fatalf("a broken reload changed the rules hash to %q", got)
	}
	batch++
	_, err = d.Sync(ctx(t), connect.NewRequest(&dalvv1.SyncRequest{DeviceId: "dev1", BaseVersion: partitionVersion(t, b, "ann", ""), Batch: batch, Ops: ops(opPut("cart/qty/sku1", "20"))}))
	checkRefusal(t, "after broken reload", err, ruleCase{code: "invalid_argument", rule: "cart/qty/*"})
	metrics := getMetrics(t, srv)
	for _, want := range []string{"dalv_rules_reload_failures_total 1", `dalv_rules_info{hash="` + newHash + `"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func getMetrics(t *testing.T, srv *proc.Server) string {
	t.Helper()
	resp, err := http.Get(srv.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func applyTx(tx *client.Tx, op *dalvv1.Op) error {
	switch op.GetKind() {
	case dalvv1.OpKind_OP_KIND_PUT:
		return tx.PutValue(op.GetKey(), op.GetValue())
	case dalvv1.OpKind_OP_KIND_DELETE:
		return tx.Delete(op.GetKey())
	case dalvv1.OpKind_OP_KIND_LIST_ADD:
		return tx.ListAdd(op.GetKey(), op.GetValue().GetScalar())
	default:
		return tx.ListRemove(op.GetKey(), op.GetValue().GetScalar())
	}
}

// checkRefusal checks err against c: nil for "ok"; else, for the server, a
// Connect error of c.code; for the SDK, a *rules.Error of the same kind;
// either way naming the rule.
func checkRefusal(t *testing.T, name string, err error, c ruleCase) {
	t.Helper()
	if c.code == "ok" {
		if err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
		return
	}
	if err == nil {
		t.Errorf("%s: allowed, want %s by rule %q", name, c.code, c.rule)
		return
	}
	if !strings.Contains(err.Error(), `rule "`+c.rule+`"`) {
		t.Errorf("%s: %v does not name rule %q", name, err, c.rule)
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		if got := codeOf(err); got != c.code {
			t.Errorf("%s: code %s, want %s: %v", name, got, c.code, err)
		}
		return
	}
	want := rules.ErrInvalid
	if c.code == "permission_denied" {
		want = rules.ErrPermission
	}
	if !errors.Is(err, want) {
		t.Errorf("%s: %v is not %v", name, err, want)
	}
}

func TestRulesRefusedAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeRules(t, bad, "rules:\n  - match: \"a\"\n    kind: json\n    schema: {type: nope}\n")
	cmd := exec.Command(binary, "serve", "--rules", bad, "--data", filepath.Join(dir, "data"), "--addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), testEnv()...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("dalv serve started with a broken rules file:\n%s", out)
	}
	if !strings.Contains(string(out), "rules line 4") || !strings.Contains(string(out), "schema does not compile") {
		t.Fatalf("the refusal does not give the line and reason:\n%s", out)
	}
	out, err = exec.Command(binary, "rules", "check", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "rules line 4") {
		t.Fatalf("dalv rules check: %v\n%s", err, out)
	}
	good := filepath.Join(dir, "good.yaml")
	writeRules(t, good, shopRules)
	out, err = exec.Command(binary, "rules", "check", good).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "OK ") {
		t.Fatalf("dalv rules check of the shop's rules: %v\n%s", err, out)
	}
}

// TestRulesPeerMismatch runs two nodes over one PostgreSQL schema with
// different rules files: each says so in its log and sets
// dalv_rules_peer_mismatch; once the second file is made the same as the
// first (a reload), both clear it.
func TestRulesPeerMismatch(t *testing.T) {
	t.Parallel()
	_, u := pgtest.SchemaOn(t, pgtest.Server(t))
	dir := t.TempDir()
	fileA, fileB := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	writeRules(t, fileA, shopRules)
	writeRules(t, fileB, "default: refuse\nrules: []\n")
	a := startServer(t, "--store", u, "--rules", fileA, "--rules-poll", "100ms")
	b := startServer(t, "--store", u, "--rules", fileB, "--rules-poll", "100ms")
	mismatch := func(srv *proc.Server, want float64) func() error {
		return func() error {
			m := metric(scrape(t, srv), "dalv_rules_peer_mismatch", nil)
			if m == nil || m.GetGauge().GetValue() != want {
				return fmt.Errorf("dalv_rules_peer_mismatch on %s = %v, want %v", srv.Addr, m, want)
			}
			return nil
		}
	}
	for _, srv := range []*proc.Server{a, b} {
		wait.For(t, 20*time.Second, mismatch(srv, 1))
		wait.For(t, 20*time.Second, func() error {
			if !strings.Contains(srv.Stderr(), "enforce other write rules than this one") {
				return fmt.Errorf("the log of %s does not say the rules differ:\n%s", srv.Addr, srv.Stderr())
			}
			return nil
		})
	}
	if n := metric(scrape(t, a), "dalv_rules_nodes", map[string]string{"hash": rulesHash(t, deviceClient(t, a, "ann"))}); n == nil || n.GetGauge().GetValue() != 1 {
		t.Errorf("dalv_rules_nodes of a's hash = %v, want 1", n)
	}
	writeRules(t, fileB, shopRules)
	for _, srv := range []*proc.Server{a, b} {
		wait.For(t, 20*time.Second, mismatch(srv, 0))
	}
	if n := metric(scrape(t, b), "dalv_rules_nodes", map[string]string{"hash": rulesHash(t, deviceClient(t, b, "ann"))}); n == nil || n.GetGauge().GetValue() != 2 {
		t.Errorf("dalv_rules_nodes of the shared hash = %v, want 2", n)
	}
	if !strings.Contains(b.Stderr(), "every node over this database enforces the same write rules") {
		t.Errorf("b's log does not say the rules agree again:\n%s", b.Stderr())
	}
}
