package bench

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dalvdb/dalv/auth"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/store/postgres"
)

// Targets of the PostgreSQL bench.
const (
	// TargetPgbenchRatio is the least share of pgbench's rate for a
	// comparable single-row transaction that three nodes must reach.
	TargetPgbenchRatio = 0.70
	// TargetWatchP99 bounds the time from a sync on one node to its
	// commit's arrival at a watcher on another.
	TargetWatchP99 = 25 * time.Millisecond
)

// PostgresConfig configures [RunPostgres]. Zero fields take the defaults.
type PostgresConfig struct {
	// Binary is the dalv executable, started as `Binary serve --store`.
	Binary string
	// Store is the PostgreSQL URL. The bench works in a schema of its own
	// there, dropped at the end.
	Store string
	// Nodes are the node counts measured, in order (default 1 and 3).
	Nodes []int
	// Devices is the number of concurrent devices, spread over the nodes
	// round robin, and pgbench's client count (default 32).
	Devices int
	// Runs, Duration and Warmup are as in [Config] (defaults 3, 5s, 1s).
	Runs     int
	Duration time.Duration
	Warmup   time.Duration
	// ValueBytes is the size of each PUT's value (default 32).
	ValueBytes int
	// Probes are device pairs measuring commit-to-watcher latency while
	// the load runs with more than one node: one syncs every ProbeEvery on
	// a node, the other watches on the next node (defaults 4 and 20ms).
	Probes     int
	ProbeEvery time.Duration
	// Pgbench is the pgbench executable (default: pgbench in PATH, then
	// /usr/lib/postgresql/*/bin).
	Pgbench string
	// ServerArgs are extra flags for each `dalv serve`.
	ServerArgs []string
	// ClientProcs, when above 0, is the GOMAXPROCS of this process, the
	// load generator, while it measures (see [ClientProcs]).
	ClientProcs int
	// Progress receives progress lines; nil discards them.
	Progress io.Writer
}

func (c PostgresConfig) withDefaults() (PostgresConfig, error) {
	if len(c.Nodes) == 0 {
		c.Nodes = []int{1, 3}
	}
	setDefault(&c.Devices, 32)
	setDefault(&c.Runs, 3)
	setDefault(&c.Duration, DefaultDuration)
	setDefault(&c.Warmup, DefaultWarmup)
	setDefault(&c.ValueBytes, DefaultValueBytes)
	setDefault(&c.Probes, 4)
	setDefault(&c.ProbeEvery, 20*time.Millisecond)
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	switch {
	case c.Binary == "" || c.Store == "":
		return c, fmt.Errorf("%w: the PostgreSQL bench needs a dalv binary and a --store URL", ErrConfig)
	case slices.ContainsFunc(c.Nodes, func(n int) bool { return n < 1 }):
		return c, fmt.Errorf("%w: node counts must be at least 1", ErrConfig)
	case c.Devices < 1, c.Runs < 1, c.Duration <= 0, c.Warmup < 0, c.Probes < 0, c.ProbeEvery <= 0:
		return c, fmt.Errorf("%w: devices, runs, durations and probes must be positive", ErrConfig)
	}
	if c.Pgbench == "" {
		c.Pgbench = findPgbench()
	}
	return c, nil
}

// findPgbench finds pgbench, or returns "" (the report says it is missing).
func findPgbench() string {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	slices.Sort(dirs)
	if len(dirs) > 0 {
		return dirs[len(dirs)-1]
	}
	return ""
}

// PostgresReport is what [RunPostgres] measured: medians over the runs.
type PostgresReport struct {
	Server   string `json:"server"`
	Devices  int    `json:"devices"`
	Runs     int    `json:"runs"`
	Duration string `json:"duration"`
	// Pgbench is pgbench's rate and latency for its transaction; Script
	// is that transaction.
	Pgbench PgRate `json:"pgbench"`
	Script  string `json:"pgbench_script"`
	// Commit is pgbench running DalvDB's commit of one PUT to a partition
	// a node holds, as one statement (the writes a node's grouped statement
	// makes for each commit in it), with as many clients: what PostgreSQL
	// does with no node in the way. CommitScript is that statement.
	Commit PgRate `json:"pgbench_dalv_commit"`
	// PgbenchCPU and CommitCPU split the CPU per transaction of the two
	// pgbench scripts (whole runs, warm-up included).
	PgbenchCPU PgCPU `json:"pgbench_cpu"`
	CommitCPU  PgCPU `json:"pgbench_dalv_commit_cpu"`
	// CommitRatio is Commit's rate over Pgbench's, as Ratio is.
	CommitRatio  float64 `json:"pgbench_dalv_commit_ratio"`
	CommitScript string  `json:"pgbench_dalv_commit_script"`
	// Nodes has one entry per node count measured.
	Nodes []PgNodes `json:"nodes"`
	// ClientProcs is the GOMAXPROCS the load generator ran with.
	ClientProcs int  `json:"client_gomaxprocs"`
	Pass        bool `json:"pass"`
}

// PgRate is a rate with its latencies, each the median over the runs.
type PgRate struct {
	Rate  float64 `json:"rate"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
	// Runs are the runs' rates.
	Runs []float64 `json:"runs"`
}

// PgNodes is the sync load on one node count.
type PgNodes struct {
	Nodes int `json:"nodes"`
	// Procs is the GOMAXPROCS each node ran with (see [nodeProcs]).
	Procs int    `json:"gomaxprocs"`
	Syncs PgRate `json:"syncs"`
	// CPU splits the CPU per sync of the closed-loop load.
	CPU PgCPU `json:"cpu"`
	// Ratio is the sync rate over pgbench's, the median of the runs'
	// ratios: each run measures pgbench and the nodes one after the other.
	Ratio float64 `json:"ratio"`
	// WatchP50ms and WatchP99ms are the probes' times from sending a sync
	// on one node to its commit reaching a watcher on another (0 with one
	// node); WatchSamples how many they took.
	WatchP50ms   float64 `json:"watch_p50_ms"`
	WatchP99ms   float64 `json:"watch_p99_ms"`
	WatchSamples uint64  `json:"watch_samples"`
	// WatchAfterAnswerP99ms is the probes' p99 from the sync's answer to
	// the commit's arrival at the watcher (0 when it arrived first): the
	// delivery without the sync's own latency.
	WatchAfterAnswerP99ms float64 `json:"watch_after_answer_p99_ms"`
	// PacedRate and PacedP99ms are of the paced load (half the sustained
	// rate) the probes ran beside.
	PacedRate  float64 `json:"paced_rate,omitempty"`
	PacedP99ms float64 `json:"paced_p99_ms,omitempty"`
	// IdleWatchP99ms is the probes' p99 with no other load.
	IdleWatchP99ms float64 `json:"idle_watch_p99_ms,omitempty"`
}

// RunPostgres measures `dalv serve --store` nodes over one PostgreSQL:
// closed-loop device syncs spread over 1 and then 3 nodes (or as
// cfg.Nodes says), and, in the same run and with as many clients, pgbench
// running a comparable single-row transaction (an UPDATE of one row of a
// small table by key and an INSERT), so the report gives the sync rate as
// a share of what PostgreSQL itself does. With several nodes, probes also
// time commits from one node to a watcher on another.
func RunPostgres(ctx context.Context, cfg PostgresConfig) (*PostgresReport, error) {
	cfg, err := cfg.withDefaults()
	if cfg.ClientProcs > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(cfg.ClientProcs))
	}
	if err != nil {
		return nil, err
	}
	pb := &pgBench{cfg: cfg, out: cfg.Progress}
	if err := pb.setup(ctx); err != nil {
		return nil, err
	}
	defer pb.cleanup()
	rep := &PostgresReport{Devices: cfg.Devices, Runs: cfg.Runs, Duration: cfg.Duration.String(), Server: pb.version,
		ClientProcs: runtime.GOMAXPROCS(0)}
	rep.Script, rep.CommitScript = pb.script, pb.commitScript
	pgRuns := make([]pgSample, 0, cfg.Runs)
	commitRuns := make([]pgSample, 0, cfg.Runs)
	nodeRuns := make([][]pgSample, len(cfg.Nodes))
	watch := make([]probeTimes, len(cfg.Nodes))
	for run := 1; run <= cfg.Runs; run++ {
		if pb.pgbench != "" {
			s, err := pb.runPgbench(ctx, run, "tx.sql", "UPDATE one row by key + INSERT")
			if err != nil {
				return nil, err
			}
			pgRuns = append(pgRuns, s)
			if s, err = pb.runPgbench(ctx, run, "commit.sql", "dalv's commit of one PUT"); err != nil {
				return nil, err
			}
			commitRuns = append(commitRuns, s)
		}
		for i, n := range cfg.Nodes {
			s, w, err := pb.runNodes(ctx, run, n)
			if err != nil {
				return nil, err
			}
			nodeRuns[i] = append(nodeRuns[i], s)
			watch[i].merge(w)
		}
	}
	rep.Pgbench, rep.Commit = medianRate(pgRuns), medianRate(commitRuns)
	rep.PgbenchCPU, rep.CommitCPU = medianCPU(pgRuns), medianCPU(commitRuns)
	if len(pgRuns) > 0 {
		rep.CommitRatio = medianRatio(commitRuns, pgRuns)
	}
	rep.Pass = pb.pgbench != ""
	for i, n := range cfg.Nodes {
		r := PgNodes{Nodes: n, Procs: nodeProcs(n), Syncs: medianRate(nodeRuns[i]), CPU: medianCPU(nodeRuns[i])}
		paced := slices.Clone(nodeRuns[i])
		slices.SortFunc(paced, func(a, b pgSample) int { return cmp.Compare(a.pacedRate, b.pacedRate) })
		if p := paced[len(paced)/2]; p.pacedRate > 0 {
			r.PacedRate, r.PacedP99ms = p.pacedRate, ms(p.pacedP99)
		}
		idle := slices.Clone(nodeRuns[i])
		slices.SortFunc(idle, func(a, b pgSample) int { return cmp.Compare(a.idleWatchP99, b.idleWatchP99) })
		r.IdleWatchP99ms = ms(idle[len(idle)/2].idleWatchP99)
		if len(pgRuns) == len(nodeRuns[i]) {
			r.Ratio = medianRatio(nodeRuns[i], pgRuns)
		}
		if h := &watch[i].fromSend; h.Count() > 0 {
			r.WatchP50ms, r.WatchP99ms, r.WatchSamples = ms(h.Quantile(0.50)), ms(h.Quantile(0.99)), h.Count()
			r.WatchAfterAnswerP99ms = ms(watch[i].fromAnswer.Quantile(0.99))
			if r.WatchP99ms >= ms(TargetWatchP99) {
				rep.Pass = false
			}
		}
		if n == 3 && r.Ratio < TargetPgbenchRatio {
			rep.Pass = false
		}
		rep.Nodes = append(rep.Nodes, r)
	}
	return rep, nil
}

// pgSample is one measurement.
type pgSample struct {
	rate     float64
	p50, p99 time.Duration
	// pacedRate and pacedP99 are of the paced load the watch probes run
	// beside, with several nodes.
	pacedRate float64
	pacedP99  time.Duration
	// idleWatchP99 is the commit-to-watcher p99 with the probes alone.
	idleWatchP99 time.Duration
	// cpu is the CPU time per sync or transaction, by who spent it.
	cpu PgCPU
}

// PgCPU is CPU time per sync (or pgbench transaction), in microseconds, by
// who spent it while the load was measured: the client (the bench's load
// generator, or pgbench), the dalv nodes, and the rest of the machine
// (PostgreSQL, and anything else running).
type PgCPU struct {
	Client float64 `json:"client_us"`
	Nodes  float64 `json:"nodes_us"`
	Rest   float64 `json:"rest_us"`
}

// cpuMark is a reading of the CPU time used so far, by who used it.
type cpuMark struct{ self, nodes, machine time.Duration }

// markCPU reads the CPU time this process, the nodes and the machine have
// used so far.
func markCPU(nodes []*proc.Server) cpuMark {
	m := cpuMark{self: selfCPU()}
	for _, n := range nodes {
		c, _ := processCPU(n.PID())
		m.nodes += c
	}
	m.machine, _ = machineCPU()
	return m
}

// perOp splits the CPU used since from, with client the CPU of a client
// process other than this one, over ops operations.
func (m cpuMark) perOp(from cpuMark, client time.Duration, ops float64) PgCPU {
	if ops <= 0 {
		return PgCPU{}
	}
	self, nodes, machine := m.self-from.self, m.nodes-from.nodes, m.machine-from.machine
	us := func(d time.Duration) float64 { return float64(max(d, 0).Microseconds()) / ops }
	return PgCPU{Client: us(self + client), Nodes: us(nodes), Rest: us(machine - self - client - nodes)}
}

// medianCPU is the median of each part over the runs.
func medianCPU(ss []pgSample) PgCPU {
	return PgCPU{
		Client: runsMedian(ss, func(s pgSample) float64 { return s.cpu.Client }),
		Nodes:  runsMedian(ss, func(s pgSample) float64 { return s.cpu.Nodes }),
		Rest:   runsMedian(ss, func(s pgSample) float64 { return s.cpu.Rest }),
	}
}

// runsMedian is the median over the runs of one figure of each: with an
// even count, the upper of the middle two (a figure one run measured).
func runsMedian(ss []pgSample, f func(pgSample) float64) float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	return upperMiddle(v)
}

// upperMiddle sorts v and returns its middle value (the upper of the two
// middle ones for an even count), or 0 when v is empty.
func upperMiddle(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// medianRatio is the median over the runs of a's rate over b's.
func medianRatio(a, b []pgSample) float64 {
	var rs []float64
	for i := range min(len(a), len(b)) {
		if b[i].rate > 0 {
			rs = append(rs, a[i].rate/b[i].rate)
		}
	}
	return upperMiddle(rs)
}

func medianRate(ss []pgSample) PgRate {
	if len(ss) == 0 {
		return PgRate{}
	}
	var r PgRate
	for _, s := range ss {
		r.Runs = append(r.Runs, s.rate)
	}
	r.Rate = runsMedian(ss, func(s pgSample) float64 { return s.rate })
	r.P50ms = runsMedian(ss, func(s pgSample) float64 { return ms(s.p50) })
	r.P99ms = runsMedian(ss, func(s pgSample) float64 { return ms(s.p99) })
	return r
}

// pgBench is one PostgreSQL bench.
type pgBench struct {
	cfg     PostgresConfig
	out     io.Writer
	id      string
	schema  string
	url     string // the store URL with the bench's schema
	dir     string
	version string
	pgbench string
	script  string
	// commitScript is DalvDB's commit statement for pgbench.
	commitScript string
	secret       []byte
	key          string
}

// setup creates the bench's schema and pgbench's tables.
func (pb *pgBench) setup(ctx context.Context) error {
	var id [4]byte
	_, _ = rand.Read(id[:])
	pb.id = hex.EncodeToString(id[:])
	pb.schema = "dalv_bench_" + pb.id
	u, err := url.Parse(pb.cfg.Store)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return fmt.Errorf("%w: --store %q is not a postgres:// URL", ErrConfig, pb.cfg.Store)
	}
	q := u.Query()
	q.Set("search_path", pb.schema)
	u.RawQuery = q.Encode()
	pb.url = u.String()
	if pb.dir, err = os.MkdirTemp("", "dalv-pgbench-"); err != nil {
		return err
	}
	conn, err := pb.connect(ctx)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", u.Redacted(), err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&pb.version); err != nil {
		return err
	}
	pb.version = "PostgreSQL " + pb.version
	s := pgx.Identifier{pb.schema}.Sanitize()
	_, err = conn.Exec(ctx, fmt.Sprintf(`CREATE SCHEMA %[1]s;
		CREATE TABLE %[1]s.pgb_heads (id integer PRIMARY KEY, version bigint NOT NULL);
		CREATE TABLE %[1]s.pgb_log (id integer NOT NULL, version bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
		INSERT INTO %[1]s.pgb_heads SELECT g, 0 FROM generate_series(1, %[2]d) g`, s, pb.cfg.Devices))
	if err != nil {
		return fmt.Errorf("create the bench schema: %w", err)
	}
	pb.script = fmt.Sprintf(`\set id :client_id + 1
BEGIN;
UPDATE %[1]s.pgb_heads SET version = version + 1 WHERE id = :id;
INSERT INTO %[1]s.pgb_log (id, version) VALUES (:id, 1);
END;
`, s)
	if err := os.WriteFile(filepath.Join(pb.dir, "tx.sql"), []byte(pb.script), 0o644); err != nil {
		return err
	}
	if err := pb.setupCommit(ctx, conn); err != nil {
		return err
	}
	pb.pgbench = pb.cfg.Pgbench
	if pb.pgbench == "" {
		fmt.Fprintln(pb.out, "pgbench not found (install PostgreSQL's client tools): no comparison")
	}
	secret, err := auth.GenerateSecret(32)
	if err != nil {
		return err
	}
	pb.secret = []byte(secret)
	pb.key, err = auth.GenerateSecret(24)
	return err
}

// setupCommit creates DalvDB's tables in the bench's schema, as a node
// does, with a partition for each pgbench client, and writes the script
// that commits one PUT to the client's partition, with the writes a node
// makes for each commit to a partition it holds: one statement, updating
// the head and writing the device record, the entry and the feed row. (Its literals never hold a
// colon before a letter, which pgbench would take for a variable.)
func (pb *pgBench) setupCommit(ctx context.Context, conn *pgx.Conn) error {
	st, err := postgres.Open(ctx, pb.url, postgres.Options{})
	if err != nil {
		return fmt.Errorf("create DalvDB's tables: %w", err)
	}
	st.Close()
	s := pgx.Identifier{pb.schema}.Sanitize()
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %[1]s.dalv_heads (part, version, horizon, feed_key)
		SELECT 'u:pgbench-' || g, 0, 0, 0 FROM generate_series(0, %[2]d) g`, s, pb.cfg.Devices-1))
	if err != nil {
		return fmt.Errorf("create pgbench's partitions: %w", err)
	}
	value := strings.Repeat("76", pb.cfg.ValueBytes) // 'v' in hex
	pb.commitScript = fmt.Sprintf(`WITH h AS (
	UPDATE %[1]s.dalv_heads SET version = version + 1,
		feed_key = GREATEST(pg_current_xact_id()::text::bigint, feed_key + 1)
	WHERE part = 'u:' || 'pgbench-' || (:client_id)::text
	RETURNING part, version, feed_key
), d AS (
	INSERT INTO %[1]s.dalv_devices (part, device, batch) SELECT part, '\x70686f6e65'::bytea, version FROM h
	ON CONFLICT (part, device) DO UPDATE SET batch = EXCLUDED.batch
), e AS (
	INSERT INTO %[1]s.dalv_entries (part, key, version, scalar_version, value, tomb_nanos)
	SELECT part, '\x62656e63682f70686f6e65'::bytea, version, version, '\x%[2]s'::bytea, NULL FROM h
	ON CONFLICT (part, key) DO UPDATE SET version = EXCLUDED.version, scalar_version = EXCLUDED.scalar_version,
		value = EXCLUDED.value, tomb_nanos = EXCLUDED.tomb_nanos
), f AS (
	INSERT INTO %[1]s.dalv_feed (part, feed_key, version, nanos, erase, ops)
	SELECT part, feed_key, version, 0, false, '\x%[2]s'::bytea FROM h
)
SELECT feed_key FROM h;
`, s, value)
	return os.WriteFile(filepath.Join(pb.dir, "commit.sql"), []byte(pb.commitScript), 0o644)
}

// cleanup drops the bench's schema and files.
func (pb *pgBench) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if conn, err := pb.connect(ctx); err == nil {
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{pb.schema}.Sanitize()+" CASCADE"); err != nil {
			fmt.Fprintf(pb.out, "drop schema %s: %v\n", pb.schema, err)
		}
		_ = conn.Close(ctx)
	}
	if pb.dir != "" {
		_ = os.RemoveAll(pb.dir)
	}
}

// connect opens a connection of the bench's own to the store URL, which may
// hold pgxpool's parameters (pool_max_conns...) for the nodes.
func (pb *pgBench) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgxpool.ParseConfig(pb.cfg.Store)
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cfg.ConnConfig)
}

// libpqURL is the store URL without the parameters that only pgx knows.
func (pb *pgBench) libpqURL() string {
	u, _ := url.Parse(pb.cfg.Store)
	q := u.Query()
	for k := range q {
		switch k {
		case "sslmode", "connect_timeout", "application_name", "sslrootcert", "sslcert", "sslkey", "passfile", "target_session_attrs":
		default:
			q.Del(k)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// runPgbench runs the pgbench script file (what says what it does) with as
// many clients as devices, for the warm-up and the duration, and reads its
// rate and latencies from its per-transaction log.
func (pb *pgBench) runPgbench(ctx context.Context, run int, file, what string) (pgSample, error) {
	secs := max(1, int((pb.cfg.Warmup+pb.cfg.Duration)/time.Second))
	prefix := fmt.Sprintf("pgbench-r%d-%s", run, strings.TrimSuffix(file, ".sql"))
	args := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(pb.cfg.Devices), "-j", "2",
		"-T", strconv.Itoa(secs), "-f", file, "-l", "--log-prefix", prefix, pb.libpqURL()}
	fmt.Fprintf(pb.out, "run %d/%d  pgbench -c %d -T %d (%s)\n", run, pb.cfg.Runs, pb.cfg.Devices, secs, what)
	cmd := exec.CommandContext(ctx, pb.pgbench, args...)
	cmd.Dir = pb.dir
	before := markCPU(nil)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return pgSample{}, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	after := markCPU(nil)
	// Log lines: client_id transaction_no time_us script_no epoch_s epoch_us.
	files, _ := filepath.Glob(filepath.Join(pb.dir, prefix+".*"))
	var h histogram
	var first, last int64
	warmupEnd := int64(0)
	var lines [][2]int64 // (end time µs, latency µs)
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return pgSample{}, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 6 {
				continue
			}
			lat, _ := strconv.ParseInt(fs[2], 10, 64)
			sec, _ := strconv.ParseInt(fs[4], 10, 64)
			usec, _ := strconv.ParseInt(fs[5], 10, 64)
			lines = append(lines, [2]int64{sec*1e6 + usec, lat})
		}
		fh.Close()
		os.Remove(f)
	}
	if len(lines) == 0 {
		return pgSample{}, fmt.Errorf("pgbench logged no transactions:\n%s", out)
	}
	first = lines[0][0]
	for _, l := range lines {
		first = min(first, l[0])
	}
	warmupEnd = first + pb.cfg.Warmup.Microseconds()
	last = warmupEnd
	n := 0
	for _, l := range lines {
		if l[0] >= warmupEnd {
			h.Record(time.Duration(l[1]) * time.Microsecond)
			last = max(last, l[0])
			n++
		}
	}
	elapsed := time.Duration(last-warmupEnd) * time.Microsecond
	if elapsed <= 0 {
		return pgSample{}, errors.New("pgbench ran too short to measure")
	}
	s := pgSample{rate: float64(n) / elapsed.Seconds(), p50: h.Quantile(0.50), p99: h.Quantile(0.99)}
	// Over the whole run, warm-up included: pgbench's own CPU is known
	// only for all of it.
	s.cpu = after.perOp(before, cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime(), float64(len(lines)))
	fmt.Fprintf(pb.out, "run %d/%d  pgbench (%s): %s tx/s, p99 %.2f ms\n", run, pb.cfg.Runs, what, group(s.rate), ms(s.p99))
	return s, nil
}

// nodeProcs is the GOMAXPROCS each of n nodes runs with: its share of the
// machine's cores, at least one, as Go would set it itself in a container
// given that share. On their own, n Go processes on these cores would each
// keep as many threads looking for work as the machine has cores, and burn
// the time PostgreSQL and the other nodes need. $GOMAXPROCS, when set,
// overrides it.
func nodeProcs(n int) int {
	if v := envProcs(); v > 0 {
		return v
	}
	return max(1, runtime.NumCPU()/n)
}

// ClientProcs is the GOMAXPROCS `dalv bench --store` gives itself, the load
// generator: one, or $GOMAXPROCS when set. Its devices need well under a
// core, and more processors would only look for work on the cores the
// nodes and PostgreSQL share; so limited, its CPU per sync is about what
// pgbench's client spends per transaction.
func ClientProcs() int {
	if v := envProcs(); v > 0 {
		return v
	}
	return 1
}

// envProcs is $GOMAXPROCS, or 0 when it is not set to a number above 0.
func envProcs() int {
	if v, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && v > 0 {
		return v
	}
	return 0
}

// runNodes starts n nodes, runs the device load spread over them (and the
// watch probes with several nodes), and stops them.
func (pb *pgBench) runNodes(ctx context.Context, run, n int) (pgSample, *probeTimes, error) {
	nodes := make([]*proc.Server, 0, n)
	defer func() {
		for _, s := range nodes {
			_ = s.Stop(10 * time.Second)
		}
	}()
	for i := range n {
		nodeURL, _ := url.Parse(pb.url)
		q := nodeURL.Query()
		q.Set("application_name", fmt.Sprintf("dalv-bench-%s-node%d", pb.id, i+1))
		nodeURL.RawQuery = q.Encode()
		args := append([]string{"--store", nodeURL.String(), "--rate-limit", "-1", "--log-level", "warn"}, pb.cfg.ServerArgs...)
		s, err := proc.Start(ctx, proc.Options{
			Binary: pb.cfg.Binary,
			Data:   filepath.Join(pb.dir, "unused"),
			Args:   args,
			Env: []string{"DALV_JWT_SECRET=" + string(pb.secret), "DALV_BACKEND_KEYS=" + pb.key,
				"GOMAXPROCS=" + strconv.Itoa(nodeProcs(n))},
		})
		if err != nil {
			return pgSample{}, nil, fmt.Errorf("start node %d: %w", i+1, err)
		}
		nodes = append(nodes, s)
	}
	ccfg := Config{Devices: pb.cfg.Devices/n + pb.cfg.Probes + 1}
	clients := make([]*clients, n)
	for i, s := range nodes {
		clients[i] = newClients(ccfg, s.URL())
		defer clients[i].close()
	}
	tag := fmt.Sprintf("b%s-r%d-n%d", pb.id, run, n)
	// Each load gets devices of its own: a device whose sync the end of a
	// load cut off does not know its version.
	devices := func(tag string) ([]*pgDevice, error) {
		devs := make([]*pgDevice, pb.cfg.Devices)
		for i := range devs {
			d, err := pb.newDevice(clients[i%n], fmt.Sprintf("%s-u%d", tag, i), "phone")
			if err != nil {
				return nil, err
			}
			devs[i] = d
		}
		return devs, nil
	}
	devs, err := devices(tag)
	if err != nil {
		return pgSample{}, nil, err
	}
	label := fmt.Sprintf("%d node", n)
	if n > 1 {
		label += "s"
	}
	s, err := pb.closedLoop(ctx, run, label, nodes, devs, 0)
	if err != nil {
		return s, nil, err
	}
	var watch probeTimes
	if n > 1 && pb.cfg.Probes > 0 {
		// Commit-to-watcher at half the load the nodes sustain: under a
		// saturated closed loop it measures the queue, not the delivery.
		interval := time.Duration(float64(time.Second) * float64(len(devs)) / (s.rate / 2))
		lctx, cancel := context.WithCancel(ctx)
		var probes sync.WaitGroup
		probeErr := make(chan error, pb.cfg.Probes)
		for i := range pb.cfg.Probes {
			user := fmt.Sprintf("%s-probe%d", tag, i)
			probes.Go(func() {
				if err := pb.probe(lctx, clients[i%n], clients[(i+1)%n], user, &watch); err != nil && lctx.Err() == nil {
					probeErr <- err
				}
			})
		}
		devs, err := devices(tag + "p")
		if err != nil {
			cancel()
			return s, nil, err
		}
		paced, err := pb.closedLoop(lctx, run, label+" paced", nodes, devs, interval)
		cancel()
		probes.Wait()
		if err != nil {
			return s, nil, err
		}
		select {
		case err := <-probeErr:
			return s, nil, fmt.Errorf("watch probe: %w", err)
		default:
		}
		s.pacedRate, s.pacedP99 = paced.rate, paced.p99
		// And with the probes alone: the delivery itself, unloaded.
		var idle probeTimes
		if err := pb.probesAlone(ctx, clients, tag+"i", &idle); err != nil {
			return s, nil, err
		}
		s.idleWatchP99 = idle.fromSend.Quantile(0.99)
	}
	for i, node := range nodes {
		select {
		case <-node.Done():
			return s, nil, fmt.Errorf("node %d exited: %v\n%s", i+1, node.ExitErr(), node.Stderr())
		default:
		}
	}
	line := fmt.Sprintf("run %d/%d  %s: %s syncs/s, p99 %.2f ms", run, pb.cfg.Runs, label, group(s.rate), ms(s.p99))
	if w := &watch.fromSend; w.Count() > 0 {
		line += fmt.Sprintf("; at %s syncs/s, sync p99 %.2f ms, commit to watcher on another node p99 %.2f ms (%d; %.2f ms after the answer), %.2f ms with no other load",
			group(s.pacedRate), ms(s.pacedP99), ms(w.Quantile(0.99)), w.Count(), ms(watch.fromAnswer.Quantile(0.99)), ms(s.idleWatchP99))
	}
	fmt.Fprintln(pb.out, line)
	return s, &watch, nil
}

// probesAlone runs the watch probes, and no other load, for the duration.
func (pb *pgBench) probesAlone(ctx context.Context, clients []*clients, tag string, times *probeTimes) error {
	n := len(clients)
	ctx, cancel := context.WithTimeout(ctx, pb.cfg.Duration)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, pb.cfg.Probes)
	for i := range pb.cfg.Probes {
		wg.Go(func() {
			if err := pb.probe(ctx, clients[i%n], clients[(i+1)%n], fmt.Sprintf("%s-probe%d", tag, i), times); err != nil && ctx.Err() == nil {
				errc <- err
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		return fmt.Errorf("watch probe: %w", err)
	default:
		return nil
	}
}

// pgDevice syncs one PUT at a time to its own partition.
type pgDevice struct {
	client dalvv1connect.ClientServiceClient
	auth   []string
	req    *dalvv1.SyncRequest
	value  []byte
	base   uint64
}

func (pb *pgBench) newDevice(c *clients, user, id string) (*pgDevice, error) {
	tok, err := auth.Mint(pb.secret, user, tokenTTL, time.Now())
	if err != nil {
		return nil, err
	}
	d := &pgDevice{client: c.device, auth: authorization(tok), value: make([]byte, pb.cfg.ValueBytes)}
	for i := range d.value {
		d.value[i] = 'v'
	}
	d.req = &dalvv1.SyncRequest{DeviceId: id, Ops: []*dalvv1.Op{{
		Kind: dalvv1.OpKind_OP_KIND_PUT, Key: "bench/" + id,
		Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: d.value}},
	}}}
	return d, nil
}

func (d *pgDevice) sync(ctx context.Context) error {
	d.req.Batch++
	d.req.BaseVersion = d.base
	putNumber(d.value, d.req.Batch)
	req := connect.NewRequest(d.req)
	req.Header()["Authorization"] = d.auth
	resp, err := d.client.Sync(ctx, req)
	if err != nil {
		return fmt.Errorf("device %s, batch %d: %w", d.req.DeviceId, d.req.Batch, err)
	}
	if m := resp.Msg; m.GetStatus() != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED || m.GetVersion() <= d.base {
		return fmt.Errorf("%w: device %s, batch %d: status %v, version %d", ErrWrongAnswer, d.req.DeviceId, d.req.Batch, m.GetStatus(), m.GetVersion())
	} else {
		d.base = m.GetVersion()
	}
	return nil
}

// closedLoop runs the devices, each syncing as soon as its last sync
// returns (or, with an interval, once every interval, staggered, a late
// sync's latency counted from when it was due), for the warm-up and then
// the measured duration.
func (pb *pgBench) closedLoop(ctx context.Context, run int, label string, nodes []*proc.Server, devs []*pgDevice, interval time.Duration) (pgSample, error) {
	var (
		measuring atomic.Bool
		done      atomic.Bool
		wg        sync.WaitGroup
		errOnce   sync.Once
		firstErr  error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hists := make([]histogram, len(devs))
	begin := time.Now()
	for i, d := range devs {
		h := &hists[i]
		next := begin.Add(interval * time.Duration(i) / time.Duration(len(devs)))
		wg.Go(func() {
			for !done.Load() {
				t0 := time.Now()
				if interval > 0 {
					if time.Sleep(time.Until(next)); done.Load() {
						return
					}
					t0, next = next, next.Add(interval)
				}
				if err := d.sync(ctx); err != nil {
					if ctx.Err() == nil {
						errOnce.Do(func() { firstErr = err; cancel() })
					}
					return
				}
				if measuring.Load() && !done.Load() {
					h.Record(time.Since(t0))
				}
			}
		})
	}
	fmt.Fprintf(pb.out, "run %d/%d  %s: %d devices, warm-up %v, measure %v\n", run, pb.cfg.Runs, label, len(devs), pb.cfg.Warmup, pb.cfg.Duration)
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	var start time.Time
	var before, after cpuMark
	if wait(pb.cfg.Warmup) {
		before = markCPU(nodes)
		measuring.Store(true)
		start = time.Now()
		wait(pb.cfg.Duration)
	}
	done.Store(true)
	elapsed := time.Since(start)
	after = markCPU(nodes)
	cancel()
	wg.Wait()
	if firstErr != nil {
		return pgSample{}, fmt.Errorf("%w: %w", ErrCallFailed, firstErr)
	}
	if err := ctx.Err(); start.IsZero() && err != nil {
		return pgSample{}, err
	}
	var h histogram
	for i := range hists {
		h.Merge(&hists[i])
	}
	return pgSample{rate: float64(h.Count()) / elapsed.Seconds(), p50: h.Quantile(0.50), p99: h.Quantile(0.99),
		cpu: after.perOp(before, 0, float64(h.Count()))}, nil
}

// probe syncs user's phone through one node every ProbeEvery while its
// tablet watches through another, and records the time from sending each
// sync to its commit's arrival at the watch.
func (pb *pgBench) probe(ctx context.Context, syncs, watches *clients, user string, times *probeTimes) error {
	phone, err := pb.newDevice(syncs, user, "phone")
	if err != nil {
		return err
	}
	tok, err := auth.Mint(pb.secret, user, tokenTTL, time.Now())
	if err != nil {
		return err
	}
	req := connect.NewRequest(&dalvv1.WatchRequest{DeviceId: "tablet"})
	req.Header()["Authorization"] = authorization(tok)
	stream, err := watches.device.Watch(ctx, req)
	if err != nil {
		return err
	}
	defer stream.Close()
	type arrival struct {
		version uint64
		at      time.Time
	}
	arrived := make(chan arrival, 64)
	go func() {
		defer close(arrived)
		for stream.Receive() {
			if m := stream.Msg(); !m.GetHeartbeat() && m.GetVersion() > 0 {
				arrived <- arrival{m.GetVersion(), time.Now()}
			}
		}
	}()
	var local probeTimes
	defer times.merge(&local)
	tick := time.NewTicker(pb.cfg.ProbeEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		sent := time.Now()
		if err := phone.sync(ctx); err != nil {
			if ctx.Err() != nil {
				continue
			}
			return err
		}
		answered := time.Now()
		for a := range arrived {
			if a.version >= phone.base {
				local.fromSend.Record(a.at.Sub(sent))
				local.fromAnswer.Record(a.at.Sub(answered)) // 0 when the watcher had it first
				break
			}
		}
	}
}

// probeTimes are the watch probes' timings: from sending each sync to its
// commit's arrival at the watch, and from the sync's answer to that
// arrival (0 when the watch had it first), which leaves the sync's own
// latency out.
type probeTimes struct {
	mu                   sync.Mutex
	fromSend, fromAnswer histogram
}

// merge adds o's timings to t.
func (t *probeTimes) merge(o *probeTimes) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fromSend.Merge(&o.fromSend)
	t.fromAnswer.Merge(&o.fromAnswer)
}

// WriteTable writes the report for people.
func (r *PostgresReport) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "dalv serve --store over %s: %d devices (pgbench: as many clients), %s per measurement, median of %d runs\n\n",
		r.Server, r.Devices, r.Duration, r.Runs)
	fmt.Fprintf(&b, "%-34s %12s %9s %9s %8s   %s\n", "", "rate /s", "p50 ms", "p99 ms", "ratio", "target")
	if r.Pgbench.Rate > 0 {
		fmt.Fprintf(&b, "%-34s %12s %9.2f %9.2f %8s\n", "pgbench: UPDATE 1 row + INSERT", group(r.Pgbench.Rate), r.Pgbench.P50ms, r.Pgbench.P99ms, "100%")
		fmt.Fprintf(&b, "%-34s %12s %9.2f %9.2f %7.1f%%\n", "pgbench: dalv's commit statement", group(r.Commit.Rate), r.Commit.P50ms, r.Commit.P99ms, 100*r.CommitRatio)
	} else {
		fmt.Fprintf(&b, "%-34s %12s\n", "pgbench", "(not run)")
	}
	for _, n := range r.Nodes {
		label := fmt.Sprintf("dalv syncs, %d node", n.Nodes)
		if n.Nodes > 1 {
			label += "s"
		}
		target := ""
		if n.Nodes == 3 {
			target = fmt.Sprintf(">= %.0f%% %s", 100*TargetPgbenchRatio, passMark(n.Ratio >= TargetPgbenchRatio))
		}
		fmt.Fprintf(&b, "%-34s %12s %9.2f %9.2f %7.1f%%   %s\n", label, group(n.Syncs.Rate), n.Syncs.P50ms, n.Syncs.P99ms, 100*n.Ratio, target)
	}
	for _, n := range r.Nodes {
		if n.WatchSamples > 0 {
			fmt.Fprintf(&b, "%-34s %12s %9s %9.2f\n", fmt.Sprintf("dalv syncs, %d nodes, paced", n.Nodes), group(n.PacedRate), "", n.PacedP99ms)
			fmt.Fprintf(&b, "%-34s %12s %9.2f %9.2f %8s   < %.0f ms %s\n", "  beside: commit to watcher on",
				fmt.Sprintf("(%d)", n.WatchSamples), n.WatchP50ms, n.WatchP99ms, "", ms(TargetWatchP99), passMark(n.WatchP99ms < ms(TargetWatchP99)))
			fmt.Fprintf(&b, "  %s\n", "another node (from sending the sync)")
			fmt.Fprintf(&b, "%-34s %12s %9s %9.2f\n", "  of which after the sync's answer", "", "", n.WatchAfterAnswerP99ms)
			fmt.Fprintf(&b, "%-34s %12s %9s %9.2f\n", "  the same, no other load", "", "", n.IdleWatchP99ms)
		}
	}
	fmt.Fprintf(&b, "\nCPU per sync or transaction, µs: %10s %10s %10s\n", "client", "dalv nodes", "the rest")
	if r.Pgbench.Rate > 0 {
		fmt.Fprintf(&b, "  %-28s %10.0f %10s %10.0f\n", "pgbench: UPDATE + INSERT", r.PgbenchCPU.Client, "", r.PgbenchCPU.Rest)
		fmt.Fprintf(&b, "  %-28s %10.0f %10s %10.0f\n", "pgbench: dalv's commit", r.CommitCPU.Client, "", r.CommitCPU.Rest)
	}
	for _, n := range r.Nodes {
		fmt.Fprintf(&b, "  %-28s %10.0f %10.0f %10.0f\n", fmt.Sprintf("dalv syncs, %d node%s", n.Nodes, map[bool]string{true: "s"}[n.Nodes > 1]), n.CPU.Client, n.CPU.Nodes, n.CPU.Rest)
	}
	fmt.Fprintf(&b, "  (the rest: PostgreSQL, and anything else running on the machine)\n\n")
	fmt.Fprintf(&b, "the client (this bench): GOMAXPROCS=%d\n", r.ClientProcs)
	for _, n := range r.Nodes {
		fmt.Fprintf(&b, "%d node%s: GOMAXPROCS=%d each", n.Nodes, map[bool]string{true: "s"}[n.Nodes > 1], n.Procs)
		if n.Nodes > 1 {
			fmt.Fprintf(&b, " (the nodes' share of the %d cores)", runtime.NumCPU())
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\npgbench's transaction:\n%s\ndalv's commit statement, one PUT to a partition the node holds, alone (pgbench's second script;\na node's statement writes this for each commit of its group):\n%s", r.Script, r.CommitScript)
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the report as JSON.
func (r *PostgresReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func passMark(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}
