// Package bench measures DalvDB through real `dalv serve` processes over
// loopback. It holds two benches.
//
// [Run], the embedded bench, measures one server on its Pebble store: the
// rate and latency of durable single-op device syncs, closed-loop and then
// paced; the time and size of a catch-up pull; two floors to compare the
// sync rate with, the rate of a no-op Connect call (the gRPC health check)
// through the same server and the rate of the same syncs through the
// engine and its store alone, in the bench's process, opened with the
// server's defaults; then device watches: the time
// from a commit to its delivery to many watchers, and the resident memory
// an idle watch costs; and what the run's writes take on disk, as left and
// compacted, per retained commit and per live key. It samples the server's
// resident memory throughout.
// Each figure is taken [Config.Runs] times and reported as the median, with
// the minimum and maximum, against DalvDB's targets ([TargetSyncRate] and
// the other Target constants).
//
// [RunPostgres], the PostgreSQL bench, measures `dalv serve --store` nodes
// sharing one PostgreSQL database: closed-loop device syncs spread over 1
// and then 3 nodes, beside pgbench running, in the same run and with as
// many clients, a comparable single-row transaction and DalvDB's own commit
// statement, so that the sync rate is given as a share of what PostgreSQL
// does alone; with several nodes, the time from a sync on one node to its
// commit's arrival at a watcher on another, beside half the sustained load
// and alone; and the CPU per sync split between the load generator, the
// nodes and the rest of the machine. Its figures are medians over
// [PostgresConfig.Runs] runs, against [TargetPgbenchRatio] (and
// [TargetPgbenchRunRatio] for every run) and [TargetWatchP99].
//
// Both benches drive their servers with the same simulated devices and the
// same load loop: closed-loop workers, each calling as soon as its last
// call returns, or paced ones whose late calls count from when they were
// due, so a server that falls behind is not hidden; a warm-up that is not
// measured; latencies in log-linear histograms.
//
// Guarantees: every sync is checked (status accepted, version advancing),
// and any failed call or a server that exits fails the run with the first
// error; a catch-up answer must hold one entry per key and not be cut; the
// delivery scenario counts every version a watcher misses or receives out
// of order, and fails its target on any.
//
// Caveats: the load generator runs on the same machine as the servers and
// competes with them for the CPU, so the figures are a floor of what a
// server does on its own; both benches report the CPU that other processes
// used while they measured. The storage floor (the engine and its store
// alone) runs inside the bench process while the server idles. Watch streams share few HTTP/2
// connections, which leaves most of a device connection's cost out of the
// memory per watch. In the PostgreSQL bench the nodes, the load generator
// and PostgreSQL share the cores, each node limited to its share of them
// and the load generator to [ClientProcs]; pgbench's own CPU is known only
// for a whole run, warm-up included.
package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dalvdb/dalv/internal/proc"
)

// Scenario names one part of the benchmark.
type Scenario string

// The scenarios, in the order a run takes them.
const (
	// Sync: many devices, each syncing one PUT at a time, durably.
	Sync Scenario = "sync"
	// Catchup: one pull of a device that missed many commits to few keys.
	Catchup Scenario = "catchup"
	// Floor: the no-op Connect call (grpc.health.v1.Health/Check) at the
	// sync scenario's concurrency.
	Floor Scenario = "floor"
	// Storage: the same syncs through the engine and its store alone, in
	// the bench process, at the same concurrency, closed-loop and then
	// paced at the sync's rate.
	Storage Scenario = "storage"
	// Delivery: many device watches, then paced backend commits to their
	// users, each timed to every watcher's stream (see watch.go).
	Delivery Scenario = "delivery"
	// IdleWatchers: the server's resident memory per open, idle watch.
	IdleWatchers Scenario = "idle-watchers"
	// Disk: the data directory's bytes per retained commit and per live
	// key, after the run's writes and after a full compaction.
	Disk Scenario = "disk"
)

// Scenarios are all scenarios, in run order.
var Scenarios = []Scenario{Sync, Catchup, Floor, Storage, Delivery, IdleWatchers, Disk}

// ParseScenarios reads a comma-separated list of scenario names; empty or
// "all" means all of them. The result is in run order.
func ParseScenarios(s string) ([]Scenario, error) {
	if s = strings.TrimSpace(s); s == "" || s == "all" {
		return slices.Clone(Scenarios), nil
	}
	want := make(map[Scenario]bool)
	for _, name := range strings.Split(s, ",") {
		sc := Scenario(strings.TrimSpace(name))
		if !slices.Contains(Scenarios, sc) {
			return nil, fmt.Errorf("%w: %q (choose from sync, catchup, floor, storage, delivery, idle-watchers, all)", ErrScenario, name)
		}
		want[sc] = true
	}
	var out []Scenario
	for _, sc := range Scenarios {
		if want[sc] {
			out = append(out, sc)
		}
	}
	return out, nil
}

// Config says what to measure and how. Zero fields take the defaults.
type Config struct {
	// Binary is the dalv executable started as `Binary serve` on a fresh
	// data directory. Required unless URL is set.
	Binary string
	// ServerArgs are extra flags for `dalv serve`, after the bench's own
	// (`--rate-limit -1 --log-level warn`), so they can override them.
	ServerArgs []string
	// URL, when set, is a running server to measure instead of starting
	// one; JWTSecret and BackendKey must then be its secrets. Its memory
	// is not sampled.
	URL        string
	JWTSecret  string
	BackendKey string
	// CommitURL, when set with URL, is another node over the same store
	// (a PostgreSQL database) that the delivery scenario sends its commits
	// to, so that they reach the watchers on URL across nodes.
	CommitURL string
	// TLS configures the clients for an https:// URL (RootCAs for a
	// server whose certificate a private CA signed); nil uses the system's
	// roots.
	TLS *tls.Config

	// Scenarios to run, in run order; nil means all.
	Scenarios []Scenario
	// Runs is how many times each figure is taken (default 5).
	Runs int
	// Duration of each throughput measurement (default 5s), after Warmup
	// (default 1s) of the same load that is not measured.
	Duration time.Duration
	Warmup   time.Duration
	// Devices is the number of concurrent devices of the sync scenario,
	// and the concurrency of the floors (default 100).
	Devices int
	// Users is the number of users the devices are spread over (default:
	// Devices, so no two devices share a partition).
	Users int
	// ValueBytes is the size of each PUT's value (default 32).
	ValueBytes int
	// Keys is how many keys each device cycles its PUTs over (default 1),
	// and so how many entries its user's partition holds per device.
	Keys int
	// PacedRate is the offered rate, in syncs per second over all devices,
	// of the sync scenario's second measurement, which gives the latency
	// at that load rather than at saturation (default DefaultPacedRate;
	// negative skips it).
	PacedRate float64
	// CatchupCommits commits over CatchupKeys keys are what the catch-up
	// device missed (defaults 10,000 and 100); CatchupPulls pulls are timed
	// per run (default 21).
	CatchupCommits int
	CatchupKeys    int
	CatchupPulls   int
	// Watchers device watches over WatchUsers users are what the delivery
	// scenario delivers to, DeliveryRate backend commits per second in all
	// across those users what it delivers (defaults 1,000, 100 and 1,000).
	Watchers     int
	WatchUsers   int
	DeliveryRate float64
	// IdleWatchers idle device watches over IdleUsers users are what the
	// idle-watchers scenario weighs (defaults 10,000 and 1,000).
	IdleWatchers int
	IdleUsers    int
	// H2C speaks HTTP/2 without TLS (one multiplexed connection) instead
	// of HTTP/1.1 with a kept-alive connection per device; to an https://
	// URL, HTTP/2 over TLS.
	H2C bool
	// Gzip lets the client accept gzipped answers, as connect-go clients do
	// by default.
	Gzip bool
	// Client is the load generator's client for the sync and floor loads:
	// ClientLean (the default over HTTP/1.1) or ClientConnect (the default
	// with H2C or Gzip, which the lean client does not speak).
	Client string
	// Dir is where temporary data directories go (default os.TempDir());
	// KeepData leaves them behind.
	Dir      string
	KeepData bool
	// ServerProfile, when set, is a file that receives a CPU profile of the
	// server taken during the last run's (closed-loop) sync measurement,
	// when the store holds the earlier runs' data. It starts the
	// server with --pprof-addr.
	ServerProfile string
	// Progress receives one line per second while measuring; nil discards.
	Progress io.Writer
}

// The load generator's clients (Config.Client).
const (
	// ClientLean is a kept-alive HTTP/1.1 connection per caller, written
	// and read by the caller's goroutine: Connect's unary protocol with the
	// binary protobuf codec, each request in one write. It leaves the two
	// cores the bench shares with the server to the server.
	ClientLean = "lean"
	// ClientConnect is connect-go's client over net/http's Transport, as
	// an application in Go calls DalvDB.
	ClientConnect = "connect"
)

// Defaults of [Config].
const (
	DefaultRuns           = 5
	DefaultDuration       = 5 * time.Second
	DefaultWarmup         = time.Second
	DefaultDevices        = 100
	DefaultValueBytes     = 32
	DefaultCatchupCommits = 10_000
	DefaultCatchupKeys    = 100
	DefaultCatchupPulls   = 21
)

func (c Config) withDefaults() (Config, error) {
	c.ServerArgs = slices.Clone(c.ServerArgs)
	if c.Scenarios == nil {
		c.Scenarios = slices.Clone(Scenarios)
	}
	for _, sc := range c.Scenarios {
		if !slices.Contains(Scenarios, sc) {
			return c, fmt.Errorf("%w: %q", ErrScenario, sc)
		}
	}
	setDefault(&c.Runs, DefaultRuns)
	setDefault(&c.Duration, DefaultDuration)
	setDefault(&c.Warmup, DefaultWarmup)
	setDefault(&c.Devices, DefaultDevices)
	setDefault(&c.Users, c.Devices)
	setDefault(&c.ValueBytes, DefaultValueBytes)
	setDefault(&c.Keys, 1)
	setDefault(&c.PacedRate, DefaultPacedRate)
	setDefault(&c.CatchupCommits, DefaultCatchupCommits)
	setDefault(&c.CatchupKeys, DefaultCatchupKeys)
	setDefault(&c.CatchupPulls, DefaultCatchupPulls)
	setDefault(&c.Watchers, DefaultWatchers)
	setDefault(&c.WatchUsers, min(DefaultWatchUsers, c.Watchers))
	setDefault(&c.DeliveryRate, DefaultDeliveryRate)
	setDefault(&c.IdleWatchers, DefaultIdleWatchers)
	setDefault(&c.IdleUsers, min(DefaultIdleUsers, c.IdleWatchers))
	if c.Client == "" {
		c.Client = ClientLean
		if c.H2C || c.Gzip {
			c.Client = ClientConnect
		}
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	switch {
	case c.Runs < 0, c.Duration < 0, c.Warmup < 0, c.Devices < 0, c.Users < 0, c.ValueBytes < 0, c.Keys < 0,
		c.CatchupCommits < 0, c.CatchupKeys < 0, c.CatchupPulls < 0,
		c.Watchers < 0, c.WatchUsers < 0, c.DeliveryRate < 0, c.IdleWatchers < 0, c.IdleUsers < 0:
		return c, fmt.Errorf("%w: negative runs, duration, count or size", ErrConfig)
	case c.Users > c.Devices:
		return c, fmt.Errorf("%w: %d users for %d devices: every user needs a device", ErrConfig, c.Users, c.Devices)
	case c.WatchUsers > c.Watchers, c.IdleUsers > c.IdleWatchers:
		return c, fmt.Errorf("%w: more watch users than watchers: every user needs a watcher", ErrConfig)
	case c.CatchupKeys > c.CatchupCommits:
		return c, fmt.Errorf("%w: %d catch-up keys need at least as many commits, not %d", ErrConfig, c.CatchupKeys, c.CatchupCommits)
	case c.URL == "" && c.Binary == "":
		return c, fmt.Errorf("%w: no dalv binary to start and no URL of a running server", ErrConfig)
	case c.URL != "" && (c.JWTSecret == "" || c.BackendKey == ""):
		return c, fmt.Errorf("%w: measuring the server at %s needs its JWT secret and a backend key", ErrConfig, c.URL)
	case c.CommitURL != "" && c.URL == "":
		return c, fmt.Errorf("%w: a commit URL needs --url: the watchers' node", ErrConfig)
	case c.Client != ClientLean && c.Client != ClientConnect:
		return c, fmt.Errorf("%w: client %q (choose %s or %s)", ErrConfig, c.Client, ClientLean, ClientConnect)
	case c.Client == ClientLean && (c.H2C || c.Gzip):
		return c, fmt.Errorf("%w: the lean client speaks HTTP/1.1 without compression: --h2c and --gzip need --client %s", ErrConfig, ClientConnect)
	case c.URL != "" && c.ServerProfile != "":
		return c, fmt.Errorf("%w: a server profile needs a server the bench starts", ErrConfig)
	}
	return c, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Run measures as cfg says and returns the report. Targets missed are in
// the report, not errors; an error means something could not be measured:
// the server failed to start or died, a call failed, or an answer was wrong.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &bencher{cfg: cfg, meter: meter{out: cfg.Progress, runs: cfg.Runs, warmup: cfg.Warmup, duration: cfg.Duration}}
	defer b.close()
	if err := b.start(ctx); err != nil {
		return nil, err
	}
	rep := newReport(cfg)
	for run := 1; run <= cfg.Runs; run++ {
		b.run = run
		vals := make(map[string]float64)
		for _, sc := range cfg.Scenarios {
			if err := b.scenario(ctx, sc, vals); err != nil {
				return nil, fmt.Errorf("run %d, %s: %w", run, sc, err)
			}
		}
		rep.add(vals)
	}
	rep.finish()
	return rep, nil
}

// bencher holds what the runs share: the server, the clients, the
// catch-up partition.
type bencher struct {
	meter
	secrets
	cfg Config

	dir       string // temporary, removed by close unless KeepData
	srv       *proc.Server
	pprofAddr string
	url       string
	id        string // distinguishes this bench's users and devices
	clients   *clients
	catchup   *catchupData
}

func (b *bencher) start(ctx context.Context) error {
	b.id = newRunID()
	var err error
	if b.dir, err = os.MkdirTemp(b.cfg.Dir, "dalv-bench-"); err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	if b.cfg.URL != "" {
		b.url, b.secret, b.key = strings.TrimRight(b.cfg.URL, "/"), []byte(b.cfg.JWTSecret), b.cfg.BackendKey
	} else if err := b.startServer(ctx); err != nil {
		return err
	}
	if b.srv != nil {
		b.mon = startMonitor(b.srv)
	} else {
		b.mon = startMonitor()
	}
	b.clients, err = newClients(b.cfg, b.url)
	return err
}

func (b *bencher) startServer(ctx context.Context) error {
	var err error
	if b.secrets, err = newSecrets(); err != nil {
		return err
	}
	data := filepath.Join(b.dir, "server")
	if b.srv, b.pprofAddr, err = b.spawnServer(ctx, data, b.cfg.ServerProfile != ""); err != nil {
		return err
	}
	b.url = b.srv.URL()
	fmt.Fprintf(b.out, "server pid %d on %s, data in %s\n", b.srv.PID(), b.url, data)
	return nil
}

// spawnServer starts `dalv serve` on data with the bench's secrets, args and
// flags, and with a pprof listener, whose address it returns, if asked.
func (b *bencher) spawnServer(ctx context.Context, data string, pprof bool, args ...string) (*proc.Server, string, error) {
	if pprof {
		args = append(args, "--pprof-addr", "127.0.0.1:0")
	}
	srv, err := startServe(ctx, b.cfg.Binary, data, append(args, b.cfg.ServerArgs...), b.secrets)
	if err != nil {
		return nil, "", fmt.Errorf("start server: %w", err)
	}
	var pprofAddr string
	if pprof {
		for _, line := range strings.Split(srv.Stdout(), "\n") {
			if rest, ok := strings.CutPrefix(line, pprofLine); ok {
				pprofAddr, _, _ = strings.Cut(rest, "/")
			}
		}
		if pprofAddr == "" {
			_ = srv.Stop(10 * time.Second)
			return nil, "", fmt.Errorf("server printed no %q line; is it a dalv with --pprof-addr?\n%s", pprofLine, srv.Stdout())
		}
	}
	return srv, pprofAddr, nil
}

// pprofLine is what `dalv serve --pprof-addr` prints before the address.
const pprofLine = "pprof listening on http://"

// serverErr says why the server is gone, if it is.
func (b *bencher) serverErr() error { return exitErr(b.srv) }

func (b *bencher) close() {
	if b.mon != nil {
		b.mon.stop()
	}
	if b.clients != nil {
		b.clients.close()
	}
	if b.srv != nil {
		if err := b.srv.Stop(10 * time.Second); err != nil && b.serverErr() == nil {
			fmt.Fprintf(b.out, "stop server: %v\n", err)
		}
	}
	if b.dir == "" {
		return
	}
	if b.cfg.KeepData {
		fmt.Fprintf(b.out, "data kept in %s\n", b.dir)
		return
	}
	if err := os.RemoveAll(b.dir); err != nil {
		fmt.Fprintf(b.out, "remove %s: %v\n", b.dir, err)
	}
}

func (b *bencher) scenario(ctx context.Context, sc Scenario, vals map[string]float64) error {
	if err := b.serverErr(); err != nil {
		return err
	}
	b.mon.reset()
	var err error
	switch sc {
	case Sync:
		err = b.syncScenario(ctx, vals)
	case Catchup:
		err = b.catchupScenario(ctx, vals)
	case Floor:
		err = b.floorScenario(ctx, vals)
	case Storage:
		err = b.storageScenario(ctx, vals)
	case Delivery:
		err = b.deliveryScenario(ctx, vals)
	case IdleWatchers:
		err = b.idleScenario(ctx, vals)
	case Disk:
		err = b.diskScenario(ctx, vals)
	}
	if err == nil {
		err = b.serverErr()
	}
	if err != nil {
		return err
	}
	if b.srv != nil {
		peak := b.mon.peak()
		vals[metricID(sc, "rss")] = float64(peak.RSS)
		vals[metricID(sc, "rss_file")] = float64(peak.File)
	}
	return nil
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
