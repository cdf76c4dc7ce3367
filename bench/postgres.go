package bench

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"time"
)

// Targets of the PostgreSQL bench.
const (
	// TargetPgbenchRatio is the least share of pgbench's rate for a
	// comparable single-row transaction that three nodes must reach, at
	// the median of the runs' ratios.
	TargetPgbenchRatio = 0.80
	// TargetPgbenchRunRatio is the least share that every run of three
	// nodes must reach.
	TargetPgbenchRunRatio = 0.70
	// TargetCitusRatio is TargetPgbenchRatio on Citus, where pgbench's
	// transaction is single-shard on distributed tables.
	TargetCitusRatio = 0.50
	// TargetWatchP99 bounds the time from a sync on one node to its
	// commit's arrival at a watcher on another.
	TargetWatchP99 = 25 * time.Millisecond
)

// DefaultCitusWarmup is the PostgreSQL bench's warm-up on Citus. Each
// connection a node opens to the coordinator is a new backend there, which
// opens its own connections to the workers, and each new backend on a
// worker loads Citus's metadata and compiles dalv_commit on its first call:
// on two shared cores, nodes just started reached their steady rate only
// some 5 s in, and a 1 s warm-up measured that start instead.
const DefaultCitusWarmup = 10 * time.Second

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
	// Runs, Duration and Warmup are as in [Config] (defaults 3, 5s, and a
	// warm-up of 1s, or DefaultCitusWarmup on Citus).
	Runs     int
	Duration time.Duration
	Warmup   time.Duration
	// ValueBytes is the size of each PUT's value (default 32).
	ValueBytes int
	// Keys is as in [Config] (default 1).
	Keys int
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
	// Client is the load generator's client for the devices' syncs, as in
	// [Config] (default ClientLean).
	Client string
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
	setDefault(&c.ValueBytes, DefaultValueBytes)
	setDefault(&c.Keys, 1)
	setDefault(&c.Probes, 4)
	setDefault(&c.ProbeEvery, 20*time.Millisecond)
	setDefault(&c.Client, ClientLean)
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	switch {
	case c.Binary == "" || c.Store == "":
		return c, fmt.Errorf("%w: the PostgreSQL bench needs a dalv binary and a --store URL", ErrConfig)
	case slices.ContainsFunc(c.Nodes, func(n int) bool { return n < 1 }):
		return c, fmt.Errorf("%w: node counts must be at least 1", ErrConfig)
	case c.Client != ClientLean && c.Client != ClientConnect:
		return c, fmt.Errorf("%w: client %q (choose %s or %s)", ErrConfig, c.Client, ClientLean, ClientConnect)
	case c.Devices < 1, c.Runs < 1, c.Duration <= 0, c.Warmup < 0, c.Probes < 0, c.ProbeEvery <= 0, c.Keys < 1:
		return c, fmt.Errorf("%w: devices, runs, durations, probes and keys must be positive", ErrConfig)
	}
	if c.Pgbench == "" {
		c.Pgbench = findPgbench()
	}
	return c, nil
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
	pb := &pgBench{cfg: cfg, meter: meter{out: cfg.Progress, runs: cfg.Runs, duration: cfg.Duration}}
	if err := pb.setup(ctx); err != nil {
		return nil, err
	}
	defer pb.cleanup()
	if pb.cfg.Warmup == 0 {
		pb.cfg.Warmup = DefaultWarmup
		if pb.citus {
			pb.cfg.Warmup = DefaultCitusWarmup
		}
	}
	cfg.Warmup, pb.meter.warmup = pb.cfg.Warmup, pb.cfg.Warmup
	rep := &PostgresReport{Devices: cfg.Devices, Keys: cfg.Keys, Runs: cfg.Runs, Duration: cfg.Duration.String(), Warmup: cfg.Warmup.String(),
		Server: pb.version, Client: cfg.Client, ClientProcs: runtime.GOMAXPROCS(0)}
	rep.Script, rep.CommitScript = pb.script, pb.commitScript
	target, runTarget := TargetPgbenchRatio, TargetPgbenchRunRatio
	if pb.citus {
		target, runTarget, rep.TwoPhase = TargetCitusRatio, 0, make(map[string]int)
	}
	rep.Target, rep.RunTarget = target, runTarget
	// counted runs f and adds the two-phase commits made meanwhile to
	// rep.TwoPhase[what] (-1 once they could not be counted).
	counted := func(what string, f func() error) error {
		if !pb.citus {
			return f()
		}
		before, ok := pb.twoPhaseCommits(ctx)
		err := f()
		after, ok2 := pb.twoPhaseCommits(ctx)
		switch {
		case !ok || !ok2 || rep.TwoPhase[what] < 0:
			rep.TwoPhase[what] = -1
		default:
			rep.TwoPhase[what] += after - before
		}
		return err
	}
	pgRuns := make([]pgSample, 0, cfg.Runs)
	commitRuns := make([]pgSample, 0, cfg.Runs)
	nodeRuns := make([][]pgSample, len(cfg.Nodes))
	watch := make([]probeTimes, len(cfg.Nodes))
	for pb.run = 1; pb.run <= cfg.Runs; pb.run++ {
		if pb.pgbench != "" {
			var s pgSample
			err := counted("pgbench", func() (err error) {
				s, err = pb.runPgbench(ctx, "tx.sql", "UPDATE one row by key + INSERT", 0)
				return err
			})
			if err != nil {
				return nil, err
			}
			pgRuns = append(pgRuns, s)
			err = counted("commit", func() (err error) {
				s, err = pb.runPgbench(ctx, "commit.sql", "dalv's commit of one PUT", 0)
				return err
			})
			if err != nil {
				return nil, err
			}
			commitRuns = append(commitRuns, s)
		}
		for i, n := range cfg.Nodes {
			var (
				s pgSample
				w *probeTimes
			)
			err := counted(nodeCount(n), func() (err error) {
				s, w, err = pb.runNodes(ctx, n)
				return err
			})
			if err != nil {
				return nil, err
			}
			if s.pacedRate > 0 && pb.pgbench != "" {
				// PostgreSQL alone offered the paced syncs' rate in
				// pgbench's transactions: the database's own tail beside
				// the syncs' and the watchers'.
				err := counted("pgbench", func() error {
					p, err := pb.runPgbench(ctx, "tx.sql", "UPDATE one row by key + INSERT", s.pacedRate)
					s.pgbenchPacedP99 = p.p99
					return err
				})
				if err != nil {
					return nil, err
				}
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
		if p := medianRun(nodeRuns[i], func(s pgSample) float64 { return s.pacedRate }); p.pacedRate > 0 {
			r.PacedRate, r.PacedP99ms = p.pacedRate, ms(p.pacedP99)
			r.PacedHandlerP99ms, r.PacedWakeP99ms = ms(p.pacedHandlerP99), ms(p.pacedWakeP99)
			r.PgbenchPacedP99ms = runsMedian(nodeRuns[i], func(s pgSample) float64 { return ms(s.pgbenchPacedP99) })
		}
		r.IdleWatchP99ms = runsMedian(nodeRuns[i], func(s pgSample) float64 { return ms(s.idleWatchP99) })
		var listening []pgSample
		for _, s := range nodeRuns[i] {
			if s.listening != nil {
				listening = append(listening, *s.listening)
			}
		}
		if len(listening) > 0 {
			r.Listening = medianRate(listening)
			if len(pgRuns) == len(listening) {
				r.ListeningRatio, r.ListeningMinRatio, r.ListeningMaxRatio = runRatios(listening, pgRuns)
			}
		}
		if len(pgRuns) == len(nodeRuns[i]) {
			r.Ratio, r.MinRatio, r.MaxRatio = runRatios(nodeRuns[i], pgRuns)
		}
		if h := &watch[i].fromSend; h.Count() > 0 {
			r.WatchP50ms, r.WatchP99ms, r.WatchSamples = ms(h.Quantile(0.50)), ms(h.Quantile(0.99)), h.Count()
			r.WatchAfterAnswerP99ms = ms(watch[i].fromAnswer.Quantile(0.99))
			if r.WatchP99ms >= ms(TargetWatchP99) {
				rep.Pass = false
			}
		}
		if n == 3 && (r.Ratio < target || r.MinRatio < runTarget) {
			rep.Pass = false
		}
		rep.Nodes = append(rep.Nodes, r)
		// On Citus every commit must be one-phase: a two-phase commit
		// counted during the nodes' runs, or none counted, fails the target.
		if pb.citus && rep.TwoPhase[nodeCount(n)] != 0 {
			rep.Pass = false
		}
	}
	return rep, nil
}

// pgBench is one PostgreSQL bench.
type pgBench struct {
	meter
	secrets
	cfg     PostgresConfig
	id      string
	schema  string
	url     string // the store URL with the bench's schema
	dir     string
	version string
	pgbench string
	script  string
	// citus is set on a Citus coordinator (see detectCitus).
	citus bool
	// commitScript is DalvDB's commit statement for pgbench.
	commitScript string
}

// pgSample is one measurement.
type pgSample struct {
	rate     float64
	p50, p99 time.Duration
	// pacedRate and pacedP99 are of the paced load the watch probes run
	// beside, with several nodes.
	pacedRate float64
	pacedP99  time.Duration
	// pacedHandlerP99 is the p99 of the time the nodes' Sync handlers
	// took over the paced measurement (0 when their metrics could not be
	// read), and pacedWakeP99 how late the bench woke for its paced calls:
	// where the paced p99 is spent.
	pacedHandlerP99, pacedWakeP99 time.Duration
	// pgbenchPacedP99 is pgbench's p99 offered pacedRate in its
	// UPDATE + INSERT transactions, with the nodes idle.
	pgbenchPacedP99 time.Duration
	// idleWatchP99 is the commit-to-watcher p99 with the probes alone.
	idleWatchP99 time.Duration
	// listening is the closed-loop load again with an idle watch open on
	// every node, with several nodes: each node then listens for the
	// others' commits.
	listening *pgSample
	// cpu is the CPU time per sync or transaction, by who spent it.
	cpu PgCPU
}

// runsMedian is the median over the runs of one figure of each: with an
// even count, the upper of the middle two (a figure one run measured).
func runsMedian(ss []pgSample, f func(pgSample) float64) float64 {
	v := make([]float64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	return median(v, upperOfMiddle)
}

// medianRun is the run whose figure f is the median over the runs, so that
// the figures taken with it are of the same run; the zero sample for none.
func medianRun(ss []pgSample, f func(pgSample) float64) pgSample {
	m := runsMedian(ss, f)
	for _, s := range ss {
		if f(s) == m {
			return s
		}
	}
	return pgSample{}
}

// medianCPU is the median of each part over the runs.
func medianCPU(ss []pgSample) PgCPU {
	return PgCPU{
		Client: runsMedian(ss, func(s pgSample) float64 { return s.cpu.Client }),
		Nodes:  runsMedian(ss, func(s pgSample) float64 { return s.cpu.Nodes }),
		Rest:   runsMedian(ss, func(s pgSample) float64 { return s.cpu.Rest }),
	}
}

// medianRatio is the median over the runs of a's rate over b's.
func medianRatio(a, b []pgSample) float64 {
	med, _, _ := runRatios(a, b)
	return med
}

// runRatios is the median, the lowest and the highest of the runs' ratios
// of a's rate to b's.
func runRatios(a, b []pgSample) (med, lo, hi float64) {
	var rs []float64
	for i := range min(len(a), len(b)) {
		if b[i].rate > 0 {
			rs = append(rs, a[i].rate/b[i].rate)
		}
	}
	if len(rs) == 0 {
		return 0, 0, 0
	}
	return median(rs, upperOfMiddle), slices.Min(rs), slices.Max(rs)
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
