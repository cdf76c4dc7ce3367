package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/internal/proc"
)

// This file holds the tests of the operator commands (dalv get, list, put,
// erase and watch) run as processes against a real server, as an operator
// runs them with DALV_ADDR and DALV_BACKEND_KEY in the environment.

// cliResult is how one run of a dalv command ended.
type cliResult struct {
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%sstderr:\n%s", r.code, r.stdout, r.stderr)
}

// cliEnv is a clean environment pointing the commands at srv with the test
// backend key, plus extra.
func cliEnv(srv *proc.Server, extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"DALV_ADDR=" + srv.URL(), "DALV_BACKEND_KEY=" + testBackendKey}, extra...)
}

// cliRun runs dalv with env and stdin and waits up to 30s for it to exit.
func cliRun(t testing.TB, env []string, stdin string, args ...string) cliResult {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(c, binary, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case c.Err() != nil:
		t.Fatalf("dalv %s did not exit within 30s:\n%v", strings.Join(args, " "), r)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("dalv %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// cliOK runs dalv, which must exit 0, and returns its stdout.
func cliOK(t testing.TB, env []string, args ...string) string {
	t.Helper()
	r := cliRun(t, env, "", args...)
	if r.code != 0 {
		t.Fatalf("dalv %s failed:\n%v", strings.Join(args, " "), r)
	}
	return r.stdout
}

// cliFails runs dalv with stdin, which must exit non-zero saying each of
// words on stderr.
func cliFails(t testing.TB, env []string, stdin string, args []string, words ...string) cliResult {
	t.Helper()
	r := cliRun(t, env, stdin, args...)
	if r.code == 0 {
		t.Fatalf("dalv %s exited 0, want a failure:\n%v", strings.Join(args, " "), r)
	}
	for _, w := range words {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("dalv %s: stderr does not say %q:\n%v", strings.Join(args, " "), w, r)
		}
	}
	return r
}

// cliTable parses a table a command printed: its rows' fields, header
// checked and dropped.
func cliTable(t testing.TB, out string) [][]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if got, want := strings.Fields(lines[0]), []string{"KEY", "VERSION", "VALUE"}; !slices.Equal(got, want) {
		t.Fatalf("table header %q, want %v:\n%s", lines[0], want, out)
	}
	var rows [][]string
	for _, l := range lines[1:] {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

// cliJSON parses one line of JSON a command printed into m. The commands
// print each value as {"json": V}, {"base64": "..."} or {"list": [...]};
// those are turned back into the API's form first, so that what a command
// printed compares with what the API answers.
func cliJSON(t testing.TB, line string, m proto.Message) {
	t.Helper()
	api, err := cliToAPI([]byte(line))
	if err != nil {
		t.Fatalf("output %q: %v", line, err)
	}
	if err := protojson.Unmarshal(api, m); err != nil {
		t.Fatalf("output %q is not a %T as JSON: %v", line, m, err)
	}
}

// cliToAPI rewrites the values of a command's JSON line (those of "items"
// and of "ops") into the API's JSON form.
func cliToAPI(line []byte) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(line, &doc); err != nil {
		return nil, err
	}
	for _, field := range []string{"items", "ops"} {
		if doc[field] == nil {
			continue
		}
		var elems []map[string]json.RawMessage
		if err := json.Unmarshal(doc[field], &elems); err != nil {
			return nil, err
		}
		for _, e := range elems {
			if e["value"] == nil {
				continue
			}
			v, err := cliValueToAPI(e["value"])
			if err != nil {
				return nil, fmt.Errorf("%s value: %w", field, err)
			}
			e["value"] = v
		}
		b, err := json.Marshal(elems)
		if err != nil {
			return nil, err
		}
		doc[field] = b
	}
	return json.Marshal(doc)
}

// cliValue is a value as the commands print it with --json.
type cliValue struct {
	JSON   json.RawMessage `json:"json"`
	Base64 *string         `json:"base64"`
	List   []cliValue      `json:"list"`
}

// bytes are the scalar bytes v stands for.
func (v cliValue) bytes() ([]byte, error) {
	switch {
	case v.JSON != nil && v.Base64 == nil && v.List == nil:
		return v.JSON, nil
	case v.Base64 != nil && v.JSON == nil && v.List == nil:
		return base64.StdEncoding.DecodeString(*v.Base64)
	}
	return nil, fmt.Errorf("scalar %+v: want exactly one of json and base64", v)
}

// cliValueToAPI turns one printed value into dalv.v1.Value's JSON.
func cliValueToAPI(raw json.RawMessage) (json.RawMessage, error) {
	var v cliValue
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	if v.List != nil {
		items := make([][]byte, len(v.List))
		for i, it := range v.List {
			b, err := it.bytes()
			if err != nil {
				return nil, err
			}
			items[i] = b
		}
		return json.Marshal(map[string]any{"list": map[string]any{"items": items}})
	}
	b, err := v.bytes()
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]any{"scalar": b})
}

// TestCLIPutGetList checks put (PUT, --delete, --list-add, --list-remove,
// --expect-version), get and list, as tables and as JSON, for a user and
// for a shared partition.
func TestCLIPutGetList(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--shared", "catalog")
	env, b := cliEnv(srv), backendClient(t, srv)
	const user = "cli-put"

	for i, args := range [][]string{
		{"put", user, "greeting", "hello"},
		{"put", user, "tags", "red", "--list-add"},
		{"put", user, "tags", "blue", "--list-add"},
		{"put", user, "--list-remove", "tags", "red"},
		{"put", user, "tmp", "x"},
		{"put", user, "tmp", "--delete"},
		{"put", user, "--expect-version", "6", "greeting", "hi there"},
	} {
		if got, want := cliOK(t, env, args...), fmt.Sprintf("committed version %d\n", i+1); got != want {
			t.Fatalf("dalv %s printed %q, want %q", strings.Join(args, " "), got, want)
		}
	}
	// VALUE is JSON; a bare word is a JSON string.
	want := partition{7, []string{`greeting="hi there"@7`, `tags=["blue"]@4`}}
	wantPartition(t, b, user, want)

	// A stale --expect-version changes nothing and says why.
	cliFails(t, env, "", []string{"put", user, "greeting", "stale", "--expect-version", "6"}, "failed_precondition", "expectedVersion is 6", "version 7")
	wantPartition(t, b, user, want)
	out := cliOK(t, env, "put", "--json", user, "n", "1")
	var cr dalvv1.CommitResponse
	cliJSON(t, strings.TrimSpace(out), &cr)
	if got, want := cr.GetVersion(), uint64(8); got != want {
		t.Fatalf("put --json: version %d, want %d", got, want)
	}

	// get: a table, and JSON that is the backend API's answer.
	rows := cliTable(t, cliOK(t, env, "get", user, "tags", "greeting"))
	if got, want := fmt.Sprint(rows), `[[tags 4 ["blue"]] [greeting 7 "hi there"]]`; got != want {
		t.Fatalf("get rows %s, want %s", got, want)
	}
	var gr dalvv1.GetResponse
	cliJSON(t, strings.TrimSpace(cliOK(t, env, "get", "--json", user, "greeting", "tags")), &gr)
	api, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: []string{"greeting", "tags"}}))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&gr, api.Msg) {
		t.Fatalf("get --json = %v, want %v", &gr, api.Msg)
	}
	r := cliFails(t, env, "", []string{"get", user, "greeting", "nokey", "tmp"}, "not found", "nokey", "tmp")
	if strings.Contains(r.stderr, "greeting") {
		t.Errorf("get names greeting as missing:\n%v", r)
	}

	// list: every key, or under a prefix; JSON as the backend API's.
	if got, want := fmt.Sprint(cliTable(t, cliOK(t, env, "list", user))), `[[greeting 7 "hi there"] [n 8 1] [tags 4 ["blue"]]]`; got != want {
		t.Fatalf("list rows %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(cliTable(t, cliOK(t, env, "list", user, "t"))), `[[tags 4 ["blue"]]]`; got != want {
		t.Fatalf("list with prefix t: rows %s, want %s", got, want)
	}
	var lr dalvv1.ListResponse
	cliJSON(t, strings.TrimSpace(cliOK(t, env, "list", "--json", user, "g")), &lr)
	if got, want := render(lr.GetItems()), []string{`greeting="hi there"@7`}; lr.GetVersion() != 8 || !slices.Equal(got, want) {
		t.Fatalf("list --json: version %d items %v, want version 8 items %v", lr.GetVersion(), got, want)
	}

	// --shared NAME in place of USER.
	if got, want := cliOK(t, env, "put", "--shared", "catalog", "cat/shoes", "42"), "committed version 1\n"; got != want {
		t.Fatalf("put --shared printed %q, want %q", got, want)
	}
	if got, want := sharedRead(t, b, "catalog"), (partition{1, []string{"cat/shoes=42@1"}}); !got.equal(want) {
		t.Fatalf("shared catalog after put --shared = %v, want %v", got, want)
	}
	wantPartition(t, b, "catalog", partition{}) // the user of that name is untouched
	if got, want := fmt.Sprint(cliTable(t, cliOK(t, env, "get", "--shared", "catalog", "cat/shoes"))), "[[cat/shoes 1 42]]"; got != want {
		t.Fatalf("get --shared rows %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(cliTable(t, cliOK(t, env, "list", "--shared", "catalog", "cat/"))), "[[cat/shoes 1 42]]"; got != want {
		t.Fatalf("list --shared rows %s, want %s", got, want)
	}
	cliFails(t, env, "", []string{"get", "--shared", "nope", "k"}, "not_found", "nope")
}

// TestCLIErase checks that erase asks first and erases only when the name
// is typed back, or with --yes.
func TestCLIErase(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "--shared", "catalog")
	env, b := cliEnv(srv), backendClient(t, srv)
	const user = "cli-erase"
	v := commit(t, b, user, opPut("k", "v"))
	before := partition{v, []string{"k=v@1"}}

	for _, tc := range []struct{ name, stdin, say string }{
		{"wrong name", "someone-else\n", "not confirmed; nothing erased"},
		{"no answer", "", "no answer"},
		{"prefix of the name", "cli-\n", "not confirmed"},
	} {
		r := cliFails(t, env, tc.stdin, []string{"erase", user}, tc.say)
		if !strings.Contains(r.stderr, "Type the name to confirm") {
			t.Errorf("%s: erase did not ask:\n%v", tc.name, r)
		}
		wantPartition(t, b, user, before)
	}
	r := cliRun(t, env, user+"\n", "erase", user)
	if r.code != 0 || r.stdout != fmt.Sprintf("erased %q at version %d\n", user, v+1) {
		t.Fatalf("erase with the name typed:\n%v", r)
	}
	wantPartition(t, b, user, partition{version: v + 1})

	commit(t, b, "cli-erase2", opPut("k", "v"))
	if got, want := cliOK(t, env, "erase", "--yes", "cli-erase2"), "erased \"cli-erase2\" at version 2\n"; got != want {
		t.Fatalf("erase --yes printed %q, want %q", got, want)
	}
	wantPartition(t, b, "cli-erase2", partition{version: 2})

	sharedCommit(t, b, "catalog", opPut("k", "v"))
	cliFails(t, env, "catalogue\n", []string{"erase", "--shared", "catalog"}, "not confirmed")
	if got := sharedRead(t, b, "catalog"); got.version != 1 || len(got.items) != 1 {
		t.Fatalf("shared catalog after a refused erase = %v", got)
	}
	if got, want := cliOK(t, env, "erase", "--shared", "catalog", "--yes"), "erased \"catalog\" at version 2\n"; got != want {
		t.Fatalf("erase --shared --yes printed %q, want %q", got, want)
	}
	if got, want := sharedRead(t, b, "catalog"), (partition{version: 2}); !got.equal(want) {
		t.Fatalf("shared catalog after erase = %v, want %v", got, want)
	}
}

// TestCLIBadInput checks that a wrong invocation exits non-zero at once
// with a message that says what is wrong, and changes nothing.
func TestCLIBadInput(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	b := backendClient(t, srv)
	const user = "cli-bad"
	v := commit(t, b, user, opPut("k", "v"))
	env := cliEnv(srv)
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "DALV_ADDR=" + srv.URL()}
	for _, tc := range []struct {
		name  string
		env   []string
		args  []string
		words []string
	}{
		{"get without USER", env, []string{"get"}, []string{"missing USER", "--shared"}},
		{"get without KEY", env, []string{"get", user}, []string{"missing KEY"}},
		{"list with two prefixes", env, []string{"list", user, "a", "b"}, []string{"too many arguments"}},
		{"put without VALUE", env, []string{"put", user, "k"}, []string{"want KEY and VALUE", "got 1"}},
		{"put without KEY", env, []string{"put", user}, []string{"want KEY and VALUE", "got 0"}},
		{"put without USER", env, []string{"put"}, []string{"missing USER"}},
		{"put --delete with VALUE", env, []string{"put", user, "k", "v2", "--delete"}, []string{"--delete takes KEY only"}},
		{"put two kinds", env, []string{"put", user, "k", "v2", "--list-add", "--list-remove"}, []string{"choose one of"}},
		{"put negative version", env, []string{"put", user, "k", "v2", "--expect-version", "-1"}, []string{"--expect-version -1", "negative"}},
		{"erase two users", env, []string{"erase", "--yes", user, "other"}, []string{"too many arguments"}},
		{"unknown flag", env, []string{"get", "--bogus", user, "k"}, []string{"unknown flag", "--bogus"}},
		{"unknown flag of put", env, []string{"put", "--force", user, "k", "v2"}, []string{"unknown flag", "--force"}},
		{"watch with an argument", env, []string{"watch", user}, []string{"unknown command", user}},
		{"wrong backend key", append(base, "DALV_BACKEND_KEY=wrong-key-0123456789abc"), []string{"put", user, "k", "v2"}, []string{"unauthenticated", "backend API key not accepted"}},
		{"wrong --key", env, []string{"get", "--key", "wrong-key-0123456789abc", user, "k"}, []string{"unauthenticated", "backend API key not accepted"}},
		{"no backend key", base, []string{"put", user, "k", "v2"}, []string{"no backend API key", "DALV_BACKEND_KEY", "--key"}},
		{"no backend key for watch", base, []string{"watch"}, []string{"no backend API key"}},
		{"bad cursor", env, []string{"watch", "--cursor", "not-a-cursor"}, []string{"invalid_argument", "not one this feed gave"}},
		{"bad key", env, []string{"put", user, "", "v2"}, []string{"invalid_argument", "key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			cliFails(t, tc.env, "", tc.args, tc.words...)
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("dalv %s took %v to fail", strings.Join(tc.args, " "), took)
			}
		})
	}
	wantPartition(t, b, user, partition{v, []string{"k=v@1"}})

	// A server that is not there is a clear error too, not a hang.
	dead := cliFreeAddr(t)
	cliFails(t, []string{"PATH=" + os.Getenv("PATH"), "DALV_ADDR=" + dead, "DALV_BACKEND_KEY=" + testBackendKey}, "", []string{"get", user, "k"}, "unavailable", dead)
}

// cliProc is a long-running dalv command whose output the test reads line
// by line.
type cliProc struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}

	mu     gosync.Mutex
	stderr bytes.Buffer
}

// cliStart starts dalv with env and stops it when the test ends.
func cliStart(t testing.TB, env []string, args ...string) *cliProc {
	t.Helper()
	p := &cliProc{cmd: exec.Command(binary, args...), lines: make(chan string, 1000), done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stderr = cliWriter{p}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

type cliWriter struct{ p *cliProc }

func (w cliWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.stderr.Write(b)
}

func (p *cliProc) errors() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// line returns the next line the command printed, failing the test when
// none comes within wait or the command exits.
func (p *cliProc) line(t testing.TB, wait time.Duration) string {
	t.Helper()
	select {
	case l := <-p.lines:
		return l
	case <-p.done:
		t.Fatalf("dalv %s exited (%v):\n%s", strings.Join(p.cmd.Args[1:], " "), p.cmd.ProcessState, p.errors())
	case <-time.After(wait):
		t.Fatalf("dalv %s printed no line within %v; stderr:\n%s", strings.Join(p.cmd.Args[1:], " "), wait, p.errors())
	}
	return ""
}

// cliFreeAddr returns a loopback address with a port free right now.
func cliFreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := proc.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// TestCLIWatch checks dalv watch: one line per commit, as text or JSON,
// with --prefix and --cursor, for users and shared partitions, and that it
// keeps running across a server restart and prints later commits, each
// once. Values that are JSON print as JSON, others (the list element e) as
// base64.
func TestCLIWatch(t *testing.T) {
	t.Parallel()
	addr := cliFreeAddr(t)
	data := filepath.Join(t.TempDir(), "data")
	args := []string{"--addr", addr, "--shared", "catalog"}
	srv := startServerOn(t, data, args...)
	env, b := cliEnv(srv), backendClient(t, srv)

	js := cliStart(t, env, "watch", "--json", "--cursor", "start")
	text := cliStart(t, env, "watch", "--prefix", "a/", "--cursor", "start")
	v1 := commit(t, b, "cli-w", opPut("a/1", `"one"`), opPut("b/1", `"one"`))
	v2 := commit(t, b, "cli-w", opPut("b/2", `"two"`))
	s1 := sharedCommit(t, b, "catalog", opPut("a/cat", `{"c":1}`))
	v3 := commit(t, b, "cli-w", opDelete("a/1"), opAdd("a/list", "e"))

	// JSON: one ChangeEvent per line, every commit, in order.
	want := []string{
		fmt.Sprintf(`user:cli-w@%d: PUT a/1="one", PUT b/1="one"`, v1),
		fmt.Sprintf(`user:cli-w@%d: PUT b/2="two"`, v2),
		fmt.Sprintf(`shared:catalog@%d: PUT a/cat={"c":1}`, s1),
		fmt.Sprintf("user:cli-w@%d: DELETE a/1, LIST_ADD a/list=e", v3),
	}
	var cursors []string
	for _, w := range want {
		var ev dalvv1.ChangeEvent
		cliJSON(t, js.line(t, streamWait), &ev)
		if got := feedRender(&ev); got != w {
			t.Fatalf("watch --json printed %q, want %q", got, w)
		}
		cursors = append(cursors, ev.GetCursor())
	}

	// Text with --prefix a/: the cursor, the partition, the version, the
	// matching ops only; no line for b/2.
	for i, w := range []string{
		fmt.Sprintf(`%s user:cli-w v%d PUT a/1="one"`, cursors[0], v1),
		fmt.Sprintf(`%s shared:catalog v%d PUT a/cat={"c":1}`, cursors[2], s1),
		fmt.Sprintf("%s user:cli-w v%d DELETE a/1 LIST_ADD a/list=base64:ZQ==", cursors[3], v3),
	} {
		if got := text.line(t, streamWait); got != w {
			t.Fatalf("watch --prefix a/ line %d = %q, want %q", i, got, w)
		}
	}

	// --cursor resumes right after that commit.
	resumed := cliStart(t, env, "watch", "--json", "--cursor", cursors[1])
	for _, w := range want[2:] {
		var ev dalvv1.ChangeEvent
		cliJSON(t, resumed.line(t, streamWait), &ev)
		if got := feedRender(&ev); got != w {
			t.Fatalf("watch --cursor %s printed %q, want %q", cursors[1], got, w)
		}
	}

	// A server restart on the same address: the watches reconnect from
	// their last cursor and print the later commits, each once.
	if err := srv.Stop(15 * time.Second); err != nil {
		t.Fatalf("stop: %v\n%s", err, srv.Stderr())
	}
	srv = startServerOn(t, data, args...)
	b = backendClient(t, srv)
	v4 := commit(t, b, "cli-w", opPut("a/2", `"after restart"`))
	var ev dalvv1.ChangeEvent
	cliJSON(t, js.line(t, 30*time.Second), &ev)
	if got, want := feedRender(&ev), fmt.Sprintf(`user:cli-w@%d: PUT a/2="after restart"`, v4); got != want {
		t.Fatalf("after the restart watch --json printed %q, want %q", got, want)
	}
	if got, want := text.line(t, 30*time.Second), fmt.Sprintf(`%s user:cli-w v%d PUT a/2="after restart"`, ev.GetCursor(), v4); got != want {
		t.Fatalf("after the restart watch --prefix printed %q, want %q", got, want)
	}
	for _, p := range []*cliProc{js, text} {
		if e := p.errors(); !strings.Contains(e, "reconnecting from cursor") || !strings.Contains(e, "unavailable") {
			t.Errorf("dalv %s did not say it reconnects after the restart:\n%s", strings.Join(p.cmd.Args[1:], " "), e)
		}
	}
	v5 := commit(t, b, "cli-w", opPut("b/3", `"three"`))
	v6 := commit(t, b, "cli-w", opPut("a/3", `"three"`))
	for _, w := range []string{fmt.Sprintf(`user:cli-w@%d: PUT b/3="three"`, v5), fmt.Sprintf(`user:cli-w@%d: PUT a/3="three"`, v6)} {
		cliJSON(t, js.line(t, streamWait), &ev)
		if got := feedRender(&ev); got != w {
			t.Fatalf("watch --json printed %q, want %q", got, w)
		}
	}
	if got, want := text.line(t, streamWait), fmt.Sprintf(`%s user:cli-w v%d PUT a/3="three"`, ev.GetCursor(), v6); got != want {
		t.Fatalf("watch --prefix a/ printed %q, want %q (nothing for b/3)", got, want)
	}
}

// TestCLIValueEncoding checks the commands' one value encoding, round trip:
// put stores JSON as given, a bare word as a JSON string and --raw bytes as
// they are, refusing broken JSON; get, list and watch print JSON values as
// JSON and other bytes as base64 behind a marker, in tables and with --json.
func TestCLIValueEncoding(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	env, b := cliEnv(srv), backendClient(t, srv)
	const user = "cli-enc"
	feed := cliStart(t, env, "watch", "--json", "--cursor", "start")
	text := cliStart(t, env, "watch", "--cursor", "start")
	raw := "\xff\xfeok\x01" // not UTF-8; no NUL, which arguments cannot hold
	for _, args := range [][]string{
		{"put", user, "obj", `{"a": [1, 2], "b": "<x>"}`},
		{"put", user, "word", "light"},
		{"put", user, "--raw", "bin", raw},
		{"put", user, "--list-add", "tags", "red"},
	} {
		cliOK(t, env, args...)
	}
	cliFails(t, env, "", []string{"put", user, "bad", `{"a":`}, "not valid JSON", "--raw")
	cliFails(t, env, "", []string{"put", user, "bad", "3 apples"}, "not valid JSON")

	// What is stored: the bytes as given, a JSON string, the raw bytes.
	api, err := b.Get(ctx(t), connect.NewRequest(&dalvv1.GetRequest{User: user, Keys: []string{"obj", "word", "bin", "tags", "bad"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := render(api.Msg.GetItems()), []string{`obj={"a": [1, 2], "b": "<x>"}@1`, `word="light"@2`, "bin=" + raw + "@3", `tags=["red"]@4`}; !slices.Equal(got, want) {
		t.Fatalf("stored %q, want %q", got, want)
	}

	want := `[[bin 3 base64://5vawE=] [obj 1 {"a":[1,2],"b":"<x>"}] [tags 4 ["red"]] [word 2 "light"]]`
	if got := fmt.Sprint(cliTable(t, cliOK(t, env, "list", user))); got != want {
		t.Errorf("list printed %s, want %s", got, want)
	}
	if got, want := fmt.Sprint(cliTable(t, cliOK(t, env, "get", user, "word", "bin"))), `[[word 2 "light"] [bin 3 base64://5vawE=]]`; got != want {
		t.Errorf("get printed %s, want %s", got, want)
	}
	wantJSON := `{"version":"4","items":[` +
		`{"key":"bin","value":{"base64":"//5vawE="},"version":"3"},` +
		`{"key":"obj","value":{"json":{"a":[1,2],"b":"<x>"}},"version":"1"},` +
		`{"key":"tags","value":{"list":[{"json":"red"}]},"version":"4"},` +
		`{"key":"word","value":{"json":"light"},"version":"2"}]}` + "\n"
	if got := cliOK(t, env, "list", "--json", user); got != wantJSON {
		t.Errorf("list --json printed\n%s want\n%s", got, wantJSON)
	}
	if got, want := cliOK(t, env, "get", "--json", user, "word"), `{"version":"4","items":[{"key":"word","value":{"json":"light"},"version":"2"}]}`+"\n"; got != want {
		t.Errorf("get --json printed\n%s want\n%s", got, want)
	}

	// watch: the same encoding per op, after the cursor.
	for _, w := range []struct{ json, text string }{
		{`{"cursor":"%s","user":"cli-enc","version":"1","ops":[{"kind":"OP_KIND_PUT","key":"obj","value":{"json":{"a":[1,2],"b":"<x>"}}}]}`,
			`%s user:cli-enc v1 PUT obj={"a":[1,2],"b":"<x>"}`},
		{`{"cursor":"%s","user":"cli-enc","version":"2","ops":[{"kind":"OP_KIND_PUT","key":"word","value":{"json":"light"}}]}`,
			`%s user:cli-enc v2 PUT word="light"`},
		{`{"cursor":"%s","user":"cli-enc","version":"3","ops":[{"kind":"OP_KIND_PUT","key":"bin","value":{"base64":"//5vawE="}}]}`,
			`%s user:cli-enc v3 PUT bin=base64://5vawE=`},
		{`{"cursor":"%s","user":"cli-enc","version":"4","ops":[{"kind":"OP_KIND_LIST_ADD","key":"tags","value":{"json":"red"}}]}`,
			`%s user:cli-enc v4 LIST_ADD tags="red"`},
	} {
		line := feed.line(t, streamWait)
		var ev struct{ Cursor string }
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Cursor == "" {
			t.Fatalf("watch --json printed %q: %v", line, err)
		}
		if want := fmt.Sprintf(w.json, ev.Cursor); line != want {
			t.Errorf("watch --json printed\n%s want\n%s", line, want)
		}
		if got, want := text.line(t, streamWait), fmt.Sprintf(w.text, ev.Cursor); got != want {
			t.Errorf("watch printed %q, want %q", got, want)
		}
	}
}

// TestCLIEraseNothing checks that erasing a partition that never had data
// says so and commits nothing, and that a partition whose keys were all
// deleted is still erased (its history goes), saying it held no keys.
func TestCLIEraseNothing(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	env, b := cliEnv(srv), backendClient(t, srv)
	if got, want := cliOK(t, env, "erase", "--yes", "nobody"), "nothing to erase: \"nobody\" has no data\n"; got != want {
		t.Fatalf("erase of an empty partition printed %q, want %q", got, want)
	}
	// No --yes: nothing to confirm, nothing asked.
	r := cliRun(t, env, "", "erase", "nobody")
	if r.code != 0 || r.stdout != "nothing to erase: \"nobody\" has no data\n" || r.stderr != "" {
		t.Fatalf("erase of an empty partition without --yes:\n%v", r)
	}
	if got, want := cliOK(t, env, "erase", "--yes", "--json", "nobody"), `{"version":"0","erased":false}`+"\n"; got != want {
		t.Fatalf("erase --json of an empty partition printed %q, want %q", got, want)
	}
	wantPartition(t, b, "nobody", partition{}) // version 0: no erase was committed

	commit(t, b, "deleted", opPut("k", `"v"`))
	commit(t, b, "deleted", opDelete("k"))
	if got, want := cliOK(t, env, "erase", "--yes", "deleted"), "erased \"deleted\" at version 3: it held no keys, only the history of deleted ones\n"; got != want {
		t.Fatalf("erase of a partition with only deleted keys printed %q, want %q", got, want)
	}
	commit(t, b, "full", opPut("k", `"v"`))
	if got, want := cliOK(t, env, "erase", "--yes", "--json", "full"), `{"version":"2","erased":true}`+"\n"; got != want {
		t.Fatalf("erase --json printed %q, want %q", got, want)
	}
}
