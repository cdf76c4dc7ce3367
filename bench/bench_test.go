package bench

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/jackc/pgx/v5"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/proc"
)

var (
	buildOnce sync.Once
	buildDir  string
	dalvBin   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// dalvBinary builds ./cmd/dalv once for the package's tests.
func dalvBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "dalv-bench-test-"); buildErr == nil {
			dalvBin, buildErr = proc.Build(buildDir)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return dalvBin
}

// lineWriter sends progress lines to the test log.
type lineWriter struct{ t *testing.T }

func (w lineWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestRun runs the request scenarios and the disk's twice, briefly,
// against a real server (which the disk scenario stops and starts again
// between the runs) and checks the figures are sane (TestWatchScenarios
// runs the others).
func TestRun(t *testing.T) {
	rep := runLogged(t, Config{
		Scenarios:      []Scenario{Sync, Catchup, Floor, Storage, Disk},
		Runs:           2,
		Duration:       300 * time.Millisecond,
		Warmup:         100 * time.Millisecond,
		Devices:        10,
		CatchupCommits: 1000,
		CatchupKeys:    100,
		CatchupPulls:   5,
	})

	get := func(sc Scenario, name string) float64 {
		t.Helper()
		return result(t, rep, sc, name)
	}
	positive := []struct {
		sc   Scenario
		name string
	}{
		{Sync, "rate"}, {Sync, "p50"}, {Sync, "p99"}, {Sync, "server_cpu"}, {Sync, "rss"}, {Sync, "rss_file"}, {Sync, "alloc_bytes"}, {Sync, "alloc_objects"},
		{Sync, "paced_p99"}, {Sync, "paced_server_p99"}, {Sync, "paced_fsync_p99"}, {Sync, "paced_per_fsync"},
		{Catchup, "time"}, {Catchup, "proto_bytes"}, {Catchup, "http_bytes"}, {Catchup, "setup_rate"}, {Catchup, "rss"},
		{Floor, "rate"}, {Floor, "ratio"}, {Floor, "rss"},
		{Storage, "rate"}, {Storage, "ratio"}, {Storage, "paced_p99"}, {Storage, "floor_cpu"}, {Storage, "floor_rate"},
		{Disk, "dir_bytes"}, {Disk, "per_commit"}, {Disk, "per_commit_compacted"}, {Disk, "per_key_compacted"}, {Disk, "ratio_compacted"},
	}
	for _, p := range positive {
		if v := get(p.sc, p.name); !(v > 0) {
			t.Errorf("%s.%s = %v, want > 0", p.sc, p.name, v)
		}
	}
	if f := strings.Fields(rep.Machine.LoadAverage); len(f) != 3 {
		t.Errorf("load average %q, want three figures from /proc/loadavg", rep.Machine.LoadAverage)
	}
	if got := get(Sync, "errors"); got != 0 {
		t.Errorf("sync errors = %v, want 0", got)
	}
	if got := get(Sync, "paced_stalls"); got != 0 {
		t.Errorf("Pebble write stalls while paced = %v, want none at this load", got)
	}
	if got, want := get(Catchup, "entries"), 100.0; got != want {
		t.Errorf("catch-up entries = %v, want one per key: %v", got, want)
	}
	if r := get(Storage, "floor_cpu_ratio"); !(r > 1) {
		t.Errorf("CPU floor / no-op call's CPU = %v, want above 1: the floor is the no-op call and a commit", r)
	}
	if got := get(Catchup, "more"); got != 0 {
		t.Errorf("catch-up more = %v, want false", got)
	}
	if p50, p99 := get(Sync, "p50"), get(Sync, "p99"); p99 < p50 {
		t.Errorf("sync p99 %v ms < p50 %v ms", p99, p50)
	}
	if rss := get(Sync, "rss"); rss < 1e6 || rss > 1e9 {
		t.Errorf("sync peak RSS = %v bytes, not a server's", rss)
	}
	if rss, file := get(Sync, "rss"), get(Sync, "rss_file"); file >= rss {
		t.Errorf("sync peak RSS %v bytes, of which %v mapped from files: want a heap beside the executable", rss, file)
	}
}

// TestRecordCPUFloor checks the floor of a sync's server CPU is the no-op
// call's plus a Pebble commit's, and that it is left out without the
// server's CPU (a server measured with --url).
func TestRecordCPUFloor(t *testing.T) {
	vals := map[string]float64{
		metricID(Floor, "server_cpu"):  40,
		metricID(Storage, "bench_cpu"): 20,
		metricID(Sync, "bench_cpu"):    40,
	}
	recordCPUFloor(vals)
	if got := vals[metricID(Storage, "floor_cpu")]; got != 60 {
		t.Errorf("floor = %v µs, want 40 + 20", got)
	}
	if got := vals[metricID(Storage, "floor_cpu_ratio")]; got != 1.5 {
		t.Errorf("floor / no-op = %v, want 60 / 40", got)
	}
	if got, want := vals[metricID(Storage, "floor_rate")], float64(runtime.NumCPU())*1e6/100; got != want {
		t.Errorf("syncs/s at the floor = %v, want %v: the cores over 60 µs of server and 40 of bench per sync", got, want)
	}

	url := map[string]float64{metricID(Storage, "bench_cpu"): 20, metricID(Sync, "bench_cpu"): 40}
	recordCPUFloor(url)
	for _, name := range []string{"floor_cpu", "floor_cpu_ratio", "floor_rate"} {
		if v, ok := url[metricID(Storage, name)]; ok {
			t.Errorf("without the server's CPU, %s = %v, want it left out", name, v)
		}
	}
}

// TestRunFailsLoudly checks that a sync the server does not accept stops
// the run with an error that says what happened, with either client.
func TestRunFailsLoudly(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle(dalvv1connect.NewClientServiceHandler(conflicting{}))
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker()))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, client := range []string{ClientLean, ClientConnect} {
		cfg := fakeServer(t, srv.URL)
		cfg.Scenarios, cfg.Runs, cfg.Duration, cfg.Warmup, cfg.Devices, cfg.Client = []Scenario{Sync}, 1, time.Second, time.Millisecond, 2, client
		_, err := Run(context.Background(), cfg)
		if !errors.Is(err, ErrCallFailed) || !errors.Is(err, ErrWrongAnswer) || !strings.Contains(err.Error(), "CONFLICT") {
			t.Fatalf("Run with the %s client against a server that answers CONFLICT: %v, want ErrCallFailed wrapping ErrWrongAnswer with the status", client, err)
		}
	}
}

// fakeServer is the configuration that measures the stand-in server at url,
// with secrets it does not check.
func fakeServer(t *testing.T, url string) Config {
	return Config{URL: url, JWTSecret: strings.Repeat("s", 32), BackendKey: strings.Repeat("k", 16), Dir: t.TempDir()}
}

type conflicting struct {
	dalvv1connect.UnimplementedClientServiceHandler
}

func (conflicting) Sync(context.Context, *connect.Request[dalvv1.SyncRequest]) (*connect.Response[dalvv1.SyncResponse], error) {
	return connect.NewResponse(&dalvv1.SyncResponse{Status: dalvv1.SyncStatus_SYNC_STATUS_CONFLICT, Conflicts: []string{"k"}}), nil
}

func TestParseScenarios(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Scenario
		err  bool
	}{
		{in: "", want: Scenarios},
		{in: "all", want: Scenarios},
		{in: "storage,sync", want: []Scenario{Sync, Storage}},
		{in: " floor , floor", want: []Scenario{Floor}},
		{in: "sync,nope", err: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseScenarios(tc.in)
			if tc.err {
				if !errors.Is(err, ErrScenario) {
					t.Fatalf("ParseScenarios(%q) error = %v, want ErrScenario", tc.in, err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("ParseScenarios(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no server":         {},
		"more users":        {Binary: "dalv", Devices: 2, Users: 3},
		"url without keys":  {URL: "http://127.0.0.1:1"},
		"negative duration": {Binary: "dalv", Duration: -time.Second},
		"negative keys":     {Binary: "dalv", Keys: -1},
		"few commits":       {Binary: "dalv", CatchupCommits: 10, CatchupKeys: 20},
		"url and profile":   {URL: "http://x", JWTSecret: "s", BackendKey: "k", ServerProfile: "p"},
		"commit url alone":  {Binary: "dalv", CommitURL: "http://x"},
		"unknown client":    {Binary: "dalv", Client: "curl"},
		"lean over h2c":     {Binary: "dalv", Client: ClientLean, H2C: true},
		"lean with gzip":    {Binary: "dalv", Client: ClientLean, Gzip: true},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrConfig) {
				t.Fatalf("Run(%+v) error = %v, want ErrConfig", cfg, err)
			}
		})
	}
}

func TestServerFailsToStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds dalv")
	}
	_, err := Run(context.Background(), Config{Binary: dalvBinary(t), ServerArgs: []string{"--no-such-flag"}, Dir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "no-such-flag") {
		t.Fatalf("Run with a bad server flag: %v, want an error naming it", err)
	}
}

// result is the figure sc.name of a one-run report.
func result(t *testing.T, rep *Report, sc Scenario, name string) float64 {
	t.Helper()
	for _, r := range rep.Results {
		if r.Scenario == sc && r.Metric == name {
			// The catch-up's setup is measured in the first run only.
			if len(r.Runs) == 0 || len(r.Runs) > rep.Settings.Runs {
				t.Fatalf("%s.%s has %d runs, want 1 to %d", sc, name, len(r.Runs), rep.Settings.Runs)
			}
			return r.Median
		}
	}
	t.Fatalf("no %s.%s in the report", sc, name)
	return 0
}

// TestWatchScenarios runs short versions of the watch scenarios against a
// real server: every delivery arrives, once and in order, and an idle
// watch costs the server some memory, but not a lot.
func TestWatchScenarios(t *testing.T) {
	rep := runLogged(t, Config{
		Scenarios:    []Scenario{Delivery, IdleWatchers},
		Runs:         1,
		Duration:     500 * time.Millisecond,
		Warmup:       200 * time.Millisecond,
		Watchers:     50,
		WatchUsers:   5,
		DeliveryRate: 200,
		IdleWatchers: 500,
		IdleUsers:    50,
	})

	if got := result(t, rep, Delivery, "missed"); got != 0 {
		t.Errorf("delivery missed = %v, want 0", got)
	}
	n := result(t, rep, Delivery, "deliveries")
	if n == 0 || n != float64(int(n)/10*10) {
		t.Errorf("deliveries = %v, want a positive multiple of the 10 watchers per user", n)
	}
	rate := result(t, rep, Delivery, "commit_rate")
	if rate < 100 || rate > 300 {
		t.Errorf("commit rate = %v/s, want about the 200/s offered", rate)
	}
	p50, p99 := result(t, rep, Delivery, "p50"), result(t, rep, Delivery, "p99")
	if !(p50 > 0) || p99 < p50 || p99 > 10_000 {
		t.Errorf("delivery p50 %v ms, p99 %v ms: not latencies", p50, p99)
	}
	if kib := result(t, rep, IdleWatchers, "per_watcher"); !(kib > 0) || kib > 1024 {
		t.Errorf("RSS growth per idle watcher = %v KiB, want between 0 and 1 MiB", kib)
	}
	if before, after := result(t, rep, IdleWatchers, "rss_before"), result(t, rep, IdleWatchers, "rss_after"); before < 1e6 || after <= before {
		t.Errorf("server RSS %v bytes before the idle watches, %v after", before, after)
	}
	if g := result(t, rep, IdleWatchers, "goroutines_per_watcher"); g < 0.5 || g > 5 {
		t.Errorf("server goroutines per idle watcher = %v, want about 1", g)
	}
	if kib := result(t, rep, IdleWatchers, "stack_per_watcher"); !(kib > 0) {
		t.Errorf("stack per idle watcher = %v KiB, want > 0", kib)
	}
}

// TestDeliveryCountsMissed checks that the delivery scenario counts the
// versions a watch skips as missed, and the report fails on them.
func TestDeliveryCountsMissed(t *testing.T) {
	f := &skipping{heads: make(map[string]uint64), subs: make(map[string][]chan uint64)}
	mux := http.NewServeMux()
	mux.Handle(dalvv1connect.NewClientServiceHandler(skippingClient{skipping: f}))
	mux.Handle(dalvv1connect.NewBackendServiceHandler(skippingBackend{skipping: f}))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()

	cfg := fakeServer(t, srv.URL)
	cfg.Scenarios, cfg.Runs, cfg.Duration, cfg.Warmup = []Scenario{Delivery}, 1, 300*time.Millisecond, 100*time.Millisecond
	cfg.Watchers, cfg.WatchUsers, cfg.DeliveryRate, cfg.Progress = 4, 2, 100, lineWriter{t}
	rep, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := result(t, rep, Delivery, "missed"); got == 0 || rep.Pass {
		t.Errorf("against a server whose watches skip version 3: missed = %v, report pass %v; want missed > 0 and a failed report", got, rep.Pass)
	}
}

// skipping is a server whose device watches skip version 3.
type skipping struct {
	mu    sync.Mutex
	heads map[string]uint64
	subs  map[string][]chan uint64
}

type skippingClient struct {
	*skipping
	dalvv1connect.UnimplementedClientServiceHandler
}

type skippingBackend struct {
	*skipping
	dalvv1connect.UnimplementedBackendServiceHandler
}

func (f skippingClient) Watch(ctx context.Context, req *connect.Request[dalvv1.WatchRequest], stream *connect.ServerStream[dalvv1.WatchEvent]) error {
	// The user is the token's subject; the fake trusts it unchecked.
	_, tok, _ := strings.Cut(req.Header().Get("Authorization"), ".")
	tok, _, _ = strings.Cut(tok, ".")
	payload, err := base64.RawURLEncoding.DecodeString(tok)
	var claims struct{ Sub string }
	if err == nil {
		err = json.Unmarshal(payload, &claims)
	}
	if err != nil {
		return connect.NewError(connect.CodeUnauthenticated, err)
	}
	ch := make(chan uint64, 1024)
	f.mu.Lock()
	head := f.heads[claims.Sub]
	f.subs[claims.Sub] = append(f.subs[claims.Sub], ch)
	f.mu.Unlock()
	if err := stream.Send(&dalvv1.WatchEvent{Version: head, Heartbeat: true}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case v := <-ch:
			if v == 3 {
				continue
			}
			if err := stream.Send(&dalvv1.WatchEvent{Version: v}); err != nil {
				return err
			}
		}
	}
}

func (f skippingBackend) Commit(_ context.Context, req *connect.Request[dalvv1.CommitRequest]) (*connect.Response[dalvv1.CommitResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	user := req.Msg.GetUser()
	f.heads[user]++
	for _, ch := range f.subs[user] {
		ch <- f.heads[user]
	}
	return connect.NewResponse(&dalvv1.CommitResponse{Version: f.heads[user]}), nil
}

// runLogged runs the bench with cfg on a server it starts from the dalv
// built for the tests (skipped with -short), with a minute to finish and
// its progress in the test log, failing the test on an error, and logs how
// long it took and the report's table.
func runLogged(t *testing.T, cfg Config) *Report {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a server")
	}
	cfg.Binary, cfg.Dir, cfg.Progress = dalvBinary(t), t.TempDir(), lineWriter{t}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	logTable(t, "Run", start, rep)
	return rep
}

// logTable logs how long the run named name took since start, and its
// report's table.
func logTable(t *testing.T, name string, start time.Time, rep interface{ WriteTable(io.Writer) error }) {
	t.Helper()
	t.Logf("%s took %v", name, time.Since(start))
	var table strings.Builder
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
}

// TestRunPostgres runs the PostgreSQL bench once, briefly, with one and two
// nodes, and checks that every part of it measured something: pgbench's
// two scripts (when pgbench is installed, and the first again paced at the
// paced syncs' rate), the nodes' syncs, without and
// with a watch open on each node, and the commits reaching a watcher on
// the other node.
func TestRunPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL nodes and pgbench")
	}
	bin := dalvBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	rep, err := RunPostgres(ctx, PostgresConfig{
		Binary:     bin,
		Store:      pgtest.Server(t),
		Nodes:      []int{1, 2},
		Devices:    4,
		Runs:       1,
		Duration:   500 * time.Millisecond,
		Warmup:     200 * time.Millisecond,
		Probes:     2,
		ProbeEvery: 20 * time.Millisecond,
		Progress:   lineWriter{t},
	})
	if err != nil {
		t.Fatalf("RunPostgres: %v", err)
	}
	logTable(t, "RunPostgres", start, rep)
	if findPgbench() != "" && (rep.Pgbench.Rate <= 0 || rep.Commit.Rate <= 0) {
		t.Errorf("pgbench rates %v and %v, want both above 0", rep.Pgbench.Rate, rep.Commit.Rate)
	}
	if len(rep.Nodes) != 2 {
		t.Fatalf("%d node counts measured, want 2", len(rep.Nodes))
	}
	for _, n := range rep.Nodes {
		if n.Syncs.Rate <= 0 {
			t.Errorf("%d nodes: sync rate %v, want above 0", n.Nodes, n.Syncs.Rate)
		}
		if n.CPU.Client <= 0 || n.CPU.Nodes <= 0 {
			t.Errorf("%d nodes: CPU per sync %+v, want the client's and the nodes' above 0", n.Nodes, n.CPU)
		}
	}
	if two := rep.Nodes[1]; two.Listening.Rate <= 0 {
		t.Errorf("2 nodes with a watch open on each: sync rate %v, want above 0", two.Listening.Rate)
	}
	if two := rep.Nodes[1]; two.PacedP99ms <= 0 || two.PacedHandlerP99ms <= 0 {
		t.Errorf("2 nodes, paced: p99 %v ms, in the nodes' handlers %v ms; want both above 0", two.PacedP99ms, two.PacedHandlerP99ms)
	}
	if two := rep.Nodes[1]; findPgbench() != "" && two.PgbenchPacedP99ms <= 0 {
		t.Errorf("2 nodes, paced: pgbench alone at that rate p99 %v ms, want above 0", two.PgbenchPacedP99ms)
	}
	if two := rep.Nodes[1]; two.WatchSamples == 0 || two.WatchP99ms <= 0 || two.IdleWatchP99ms <= 0 {
		t.Errorf("2 nodes: %d commits timed to the watcher, p99 %v ms, idle p99 %v ms; want some", two.WatchSamples, two.WatchP99ms, two.IdleWatchP99ms)
	} else if two.WatchAfterAnswerP99ms > two.WatchP99ms {
		t.Errorf("2 nodes: p99 after the answer %v ms is above the p99 from sending %v ms", two.WatchAfterAnswerP99ms, two.WatchP99ms)
	}
}

// TestMedianRatio checks the ratios the PostgreSQL bench reports: the
// median, lowest and highest of each run's ratio, runs whose reference
// measured nothing left out.
func TestMedianRatio(t *testing.T) {
	rates := func(rs ...float64) []pgSample {
		ss := make([]pgSample, len(rs))
		for i, r := range rs {
			ss[i].rate = r
		}
		return ss
	}
	for _, tc := range []struct {
		a, b        []pgSample
		med, lo, hi float64
	}{
		{rates(10, 40, 30), rates(10, 10, 100), 1, 0.3, 4}, // 1, 4, 0.3
		{rates(10, 40), rates(20, 0), 0.5, 0.5, 0.5},       // the second run's reference is 0
		{rates(10, 40, 50), rates(10), 1, 1, 1},            // only runs both have
		{rates(10), nil, 0, 0, 0},                          // no reference at all
		{rates(2, 3, 4, 5), rates(1, 1, 1, 1), 4, 2, 5},    // an even count takes the upper middle
	} {
		if med, lo, hi := runRatios(tc.a, tc.b); med != tc.med || lo != tc.lo || hi != tc.hi {
			t.Errorf("runRatios(%v, %v) = %v, %v, %v, want %v, %v, %v", tc.a, tc.b, med, lo, hi, tc.med, tc.lo, tc.hi)
		}
		if got := medianRatio(tc.a, tc.b); got != tc.med {
			t.Errorf("medianRatio(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.med)
		}
	}
}

// TestMedian checks the one median both benches take: the middle value,
// and with an even count the mean of the middle two or, for the
// PostgreSQL bench, the upper of them.
func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		v           []float64
		mean, upper float64
	}{
		{nil, 0, 0},
		{[]float64{7}, 7, 7},
		{[]float64{3, 1, 2}, 2, 2},
		{[]float64{4, 1, 3, 2}, 2.5, 3},
	} {
		if got := median(slices.Clone(tc.v), meanOfMiddle); got != tc.mean {
			t.Errorf("median(%v, meanOfMiddle) = %v, want %v", tc.v, got, tc.mean)
		}
		if got := median(slices.Clone(tc.v), upperOfMiddle); got != tc.upper {
			t.Errorf("median(%v, upperOfMiddle) = %v, want %v", tc.v, got, tc.upper)
		}
	}
	if got, want := median([]time.Duration{4, 1, 3, 2}, meanOfMiddle), time.Duration(2); got != want {
		t.Errorf("median of durations 1-4 = %v, want %v (integer mean)", got, want)
	}
}

// TestDeliveryAcrossNodes runs the delivery scenario with its watches on
// one node and its commits sent to another over the same PostgreSQL: every
// commit reaches every watcher of its user, in order.
func TestDeliveryAcrossNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two nodes over PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	base, schema := pgtest.Server(t), "dalv_bench_test_"+newRunID()
	store := pgtest.WithParam(base, "search_path", schema) // the nodes create it
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), base)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Error(err)
		}
	})
	s, err := newSecrets()
	if err != nil {
		t.Fatal(err)
	}
	var nodes []*proc.Server
	for range 2 {
		srv, err := startServe(ctx, dalvBinary(t), t.TempDir(), []string{"--store", store}, s)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Stop(10 * time.Second) })
		nodes = append(nodes, srv)
	}
	rep, err := Run(ctx, Config{
		URL: nodes[1].URL(), CommitURL: nodes[0].URL(), JWTSecret: string(s.secret), BackendKey: s.key,
		Scenarios: []Scenario{Delivery}, Runs: 1, Duration: 500 * time.Millisecond, Warmup: 200 * time.Millisecond,
		Watchers: 50, WatchUsers: 5, DeliveryRate: 200, Dir: t.TempDir(), Progress: lineWriter{t},
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := result(t, rep, Delivery, "missed"); got != 0 {
		t.Errorf("delivery across nodes missed = %v, want 0", got)
	}
	if n := result(t, rep, Delivery, "deliveries"); n == 0 || n != float64(int(n)/10*10) {
		t.Errorf("deliveries across nodes = %v, want a positive multiple of the 10 watchers per user", n)
	}
}
