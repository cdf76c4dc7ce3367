package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// This file tests dalv export and dalv import (BackendService.Export) as
// processes against a real server.

// contents reads user's live keys and values, versions left out: what an
// export then import must give back.
func contents(t testing.TB, b dalvv1connect.BackendServiceClient, user string) []string {
	t.Helper()
	var out []string
	token := ""
	for {
		resp, err := b.List(ctx(t), connect.NewRequest(&dalvv1.ListRequest{User: user, PageSize: 1000, PageToken: token}))
		if err != nil {
			t.Fatalf("List(%s): %v", user, err)
		}
		for _, c := range resp.Msg.GetItems() {
			if l := c.GetValue().GetList(); l != nil {
				items := make([]string, len(l.GetItems()))
				for i, it := range l.GetItems() {
					items[i] = strconv.Quote(string(it))
				}
				out = append(out, fmt.Sprintf("%q=list[%s]", c.GetKey(), strings.Join(items, " ")))
			} else {
				out = append(out, fmt.Sprintf("%q=%q", c.GetKey(), c.GetValue().GetScalar()))
			}
		}
		if token = resp.Msg.GetNextPageToken(); token == "" {
			return out
		}
	}
}

// TestCLIExportEraseImport exports a partition of every kind of value,
// erases it, imports the export back in small commits, and finds the same
// keys and values; and imports it into another user too. It runs on the
// embedded store and over PostgreSQL.
func TestCLIExportEraseImport(t *testing.T) {
	t.Parallel()
	t.Run("Embedded", func(t *testing.T) {
		t.Parallel()
		testExportEraseImport(t, startServer(t))
	})
	t.Run("Postgres", func(t *testing.T) {
		t.Parallel()
		_, u := pgtest.SchemaOn(t, pgtest.Server(t))
		testExportEraseImport(t, startServer(t, "--store", u))
	})
}

func testExportEraseImport(t *testing.T, srv *proc.Server) {
	b := backendClient(t, srv)
	env := cliEnv(srv)
	commitOps(t, b, "alice", opPut("prefs/theme", `"dark"`), opPut("profile", `{"name":"Ada","tags":["x"]}`),
		opPut("spaced", `{"a": 1}`), opPut("html", `"<b>&"`), opPut("bin", "\x00\xffbytes"), opPut("empty", ""),
		opPut("number", "42"), opPutList("cart/items", `"milk"`, "\x01raw", `{"q":2}`), opPut("sys/plan", "gold"),
		opPut("unicode/ключ", `"ü"`))
	commitOps(t, b, "alice", opAdd("cart/items", "eggs"), opPut("later", "text, not JSON"), opDelete("number"))
	want := contents(t, b, "alice")
	if len(want) != 10 {
		t.Fatalf("seeded %d keys, want 10: %v", len(want), want)
	}

	r := cliRun(t, env, "", "export", "alice")
	if r.code != 0 {
		t.Fatalf("dalv export failed:\n%v", r)
	}
	if r.stderr != "" {
		t.Errorf("dalv export with stderr piped wrote %q to it, want no progress", r.stderr)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if got, want := len(lines), 10+2; got != want {
		t.Fatalf("export has %d lines, want %d:\n%s", got, want, r.stdout)
	}
	if got, want := lines[0], `{"dalvExport":1,"user":"alice","version":2}`; got != want {
		t.Errorf("header = %s, want %s", got, want)
	}
	for _, line := range []string{
		`{"key":"prefs/theme","json":"dark"}`,
		`{"key":"profile","json":{"name":"Ada","tags":["x"]}}`,
		`{"key":"spaced","base64":"eyJhIjogMX0="}`,
		`{"key":"html","json":"<b>&"}`,
		`{"key":"empty","base64":""}`,
		`{"key":"cart/items","list":[{"json":"milk"},{"base64":"AXJhdw=="},{"json":{"q":2}},{"base64":"ZWdncw=="}]}`,
		`{"end":true,"keys":10}`,
	} {
		if !slices.Contains(lines, line) {
			t.Errorf("export has no line %s:\n%s", line, r.stdout)
		}
	}
	file := filepath.Join(t.TempDir(), "alice.jsonl")
	if err := os.WriteFile(file, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}

	cliOK(t, env, "erase", "alice", "--yes")
	if got := contents(t, b, "alice"); len(got) != 0 {
		t.Fatalf("after erase alice holds %v", got)
	}
	if got, want := cliOK(t, env, "import", file, "--max-ops", "3"), "imported 10 keys in 4 commits\n"; got != want {
		t.Errorf("dalv import printed %q, want %q", got, want)
	}
	if got := contents(t, b, "alice"); !slices.Equal(got, want) {
		t.Errorf("after export, erase and import alice holds\n%v\nwant\n%v", got, want)
	}
	cliOK(t, env, "import", file, "bob")
	if got := contents(t, b, "bob"); !slices.Equal(got, want) {
		t.Errorf("the export imported into bob gives\n%v\nwant\n%v", got, want)
	}

	// A file cut short, or not an export, is refused and writes nothing.
	cut := filepath.Join(t.TempDir(), "cut.jsonl")
	if err := os.WriteFile(cut, []byte(strings.Join(lines[:len(lines)-1], "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cliFails(t, env, "", []string{"import", cut, "carol"}, "without its trailer", "cut short")
	cliFails(t, env, "hello\n", []string{"import", "-", "carol"}, "not a dalv export header")
	if got := contents(t, b, "carol"); len(got) != 0 {
		t.Errorf("refused imports left carol with %v", got)
	}
}

// settledRSS waits until srv's resident memory has stayed within 1 MB for a
// second, and returns it.
func settledRSS(t *testing.T, srv *proc.Server) int64 {
	t.Helper()
	const window = 20 // samples, 50 ms apart
	var samples []int64
	wait.ForEvery(t, 30*time.Second, 50*time.Millisecond, func() error {
		rss, err := srv.RSS()
		if err != nil {
			return err
		}
		samples = append(samples, rss)
		if len(samples) < window {
			return fmt.Errorf("%d samples of RSS, want %d", len(samples), window)
		}
		last := samples[len(samples)-window:]
		if spread := slices.Max(last) - slices.Min(last); spread >= 1<<20 {
			return fmt.Errorf("RSS moved by %d KB in the last second", spread>>10)
		}
		return nil
	})
	return samples[len(samples)-1]
}

// commitOps commits ops to user in one commit.
func commitOps(t testing.TB, b dalvv1connect.BackendServiceClient, user string, o ...*dalvv1.Op) uint64 {
	t.Helper()
	resp, err := b.Commit(ctx(t), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: o}))
	if err != nil {
		t.Fatalf("Commit(%s): %v", user, err)
	}
	return resp.Msg.GetVersion()
}

// TestExportBoundedMemory exports a partition of 20,000 keys of 2 KiB
// (DALV_TEST_EXPORT_KEYS sets another count, such as 100000) to a file,
// sampling the server's resident memory meanwhile: it must grow by less
// than half the partition's size, so the export streams pages instead of
// holding the partition. (An export made to hold every page grew it by
// 76–90 MB; the streaming one by 0–10 MB, from a baseline taken once the
// commits' aftermath settled.)
func TestExportBoundedMemory(t *testing.T) {
	t.Parallel()
	n := 20000
	if s := os.Getenv("DALV_TEST_EXPORT_KEYS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1000 {
			t.Fatalf("DALV_TEST_EXPORT_KEYS=%q: want a number of keys, at least 1000", s)
		}
	}
	const valueBytes = 2048
	srv := startServer(t)
	b := backendClient(t, srv)
	val := strings.Repeat("v", valueBytes-8)
	for i := 0; i < n; i += 1000 {
		var o []*dalvv1.Op
		for k := i; k < min(i+1000, n); k++ {
			o = append(o, opPut(fmt.Sprintf("items/%07d", k), fmt.Sprintf("%08d%s", k, val)))
		}
		commitOps(t, b, "big", o...)
	}
	// The commits leave the store flushing and compacting, and the Go
	// runtime returning their requests' memory: the baseline is taken once
	// that has settled, so that the growth measured is the export's.
	before := settledRSS(t, srv)
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if rss, err := srv.RSS(); err == nil && rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	file := filepath.Join(t.TempDir(), "big.jsonl")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(c, binary, "export", "big")
	cmd.Env = cliEnv(srv)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = f, &stderr
	start := time.Now()
	err = cmd.Run()
	elapsed := time.Since(start)
	close(stop)
	<-sampled
	f.Close()
	if err != nil {
		t.Fatalf("dalv export: %v\n%s", err, stderr.String())
	}

	in, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	sc := bufio.NewScanner(in)
	sc.Buffer(nil, 1<<20)
	lines, last := 0, ""
	for sc.Scan() {
		lines++
		if lines == 1 || lines == n+2 {
			continue
		}
		var l struct{ Key string }
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %d: %v", lines, err)
		}
		if want := fmt.Sprintf("items/%07d", lines-2); l.Key != want {
			t.Fatalf("line %d has key %q, want %q (every key once, in order)", lines, l.Key, want)
		}
		last = l.Key
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if lines != n+2 {
		t.Fatalf("export has %d lines (last key %q), want %d", lines, last, n+2)
	}
	size := int64(n) * valueBytes
	growth := peak.Load() - before
	t.Logf("export of %d keys (%d MB of values) in %v: server RSS %d MB before, peak %d MB during (+%d MB)",
		n, size>>20, elapsed.Round(time.Millisecond), before>>20, peak.Load()>>20, growth>>20)
	if growth > size/2 {
		t.Errorf("the server's RSS grew by %d MB during the export of %d MB: over half the partition", growth>>20, size>>20)
	}
}
