package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/dalvdb/dalv/bench"
)

func newBenchCmd() *cobra.Command {
	var (
		cfg                   bench.Config
		scenarios, serverArgs string
		rulesFile             string
		asJSON                bool
		cpuProfile, store     string
		caFile, against       string
	)
	cmd := &cobra.Command{
		Use:   "bench [--runs 5] [--duration 5s] [--scenario sync,catchup,floor,storage,delivery,idle-watchers,disk]",
		Short: "Measure a real dalv serve on loopback",
		Long: `Measure a real dalv serve on loopback and report the median of --runs runs,
with min and max, against DalvDB's targets.

By default it starts this binary as "dalv serve --rate-limit -1" on a fresh
temporary data directory with generated secrets, and removes the directory
afterwards. Scenarios:

  sync     --devices devices over --users users, each syncing one PUT at a
           time, durably: syncs/s, p50 and p99 latency, errors (must be 0),
           and the bytes and objects the server allocated per sync (from
           its /metrics); then the same paced at --paced-rate syncs/s in all, for the
           latency at that load rather than at saturation, with where
           its tail is spent: the p99 in the server's handler and of its
           WAL fsyncs, and write stalls (from the server's /metrics over
           that window), and how late the load generator woke for its calls
  catchup  a device that missed --catchup-commits commits to --catchup-keys
           keys pulls once: time, answer size, entries, more
  floor    the no-op Connect call (grpc.health.v1.Health/Check) at the same
           concurrency, and the sync rate as a share of it
  storage  the engine and its store alone, in this process: the same
           devices' syncs at the same concurrency, and the sync rate as a
           share of it; then the same paced at --paced-rate, for the p99 of
           a sync's own work beside the sync's; with floor, the least server
           CPU a sync can take (the no-op call's plus the engine's)
  delivery --watchers device watches over --watch-users users (h2c, 200
           streams a connection), then --delivery-rate backend commits/s of
           one PUT across those users: p50/p99 from sending a commit to each
           watcher's stream delivering its version, and deliveries missed or
           out of order (must be 0); with --url and --commit-url, the
           commits go to another node than the watches
  idle-watchers
           --idle-watchers watches over --idle-users users, left idle: the
           server's RSS growth per watch, from before opening them (after a
           garbage collection) to all open, heartbeat received and settled
  disk     the server stopped, its data directory measured as left and after
           a full compaction against what the store keeps: bytes per retained
           commit and per live key; then the server starts again

The load generator shares the machine with the server, so its own cost is
part of every rate. The sync and floor loads (and --store's devices) go
through a lean client by default: a kept-alive HTTP/1.1 connection per device,
written and read by the device's own goroutine, each request Connect's unary
form with protobuf in one write, at about half the CPU per call of
connect-go's client over net/http. --client connect measures through
connect-go's client instead, as a Go application calls DalvDB; --h2c and
--gzip use it.

The server's resident memory is sampled every 100 ms throughout. Progress goes
to stderr, one line a second; the table (or --json) to stdout.

With --url it measures a running server instead, with the secrets in
DALV_JWT_SECRET and DALV_BACKEND_KEY (or the first of DALV_BACKEND_KEYS);
give it --rate-limit -1 or the rate limit is what you measure.

With --against OLD it measures this binary against another dalv binary, in
--runs rounds that run every scenario once with each, the other first in odd
rounds and second in even ones, and prints both medians beside each round's
ratio: a change measured side by side with the build before it. Copy both
binaries just before (cp): the resident memory of a file go build has just
written can read several MB higher.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if against != "" && (cfg.URL != "" || store != "" || cfg.ServerProfile != "") {
				return errors.New("--against starts both servers itself on the embedded store and profiles neither: leave out --url, --store and --server-cpuprofile")
			}
			var err error
			if cfg.Scenarios, err = bench.ParseScenarios(scenarios); err != nil {
				return err
			}
			cfg.ServerArgs = strings.Fields(serverArgs)
			if rulesFile != "" {
				if cfg.URL != "" {
					return errors.New("--rules starts the server with write rules; with --url, start that server with --rules instead")
				}
				abs, err := filepath.Abs(rulesFile)
				if err != nil {
					return err
				}
				cfg.ServerArgs = append(cfg.ServerArgs, "--rules", abs)
			}
			cfg.Progress = cmd.ErrOrStderr()
			if cfg.URL != "" {
				cfg.JWTSecret = os.Getenv("DALV_JWT_SECRET")
				cfg.BackendKey = os.Getenv("DALV_BACKEND_KEY")
				if cfg.BackendKey == "" {
					cfg.BackendKey, _, _ = strings.Cut(os.Getenv("DALV_BACKEND_KEYS"), ",")
				}
				if cfg.JWTSecret == "" || cfg.BackendKey == "" {
					return errors.New("--url needs the server's secrets: export DALV_JWT_SECRET and DALV_BACKEND_KEY")
				}
				if cfg.TLS, err = clientTLS(caFile); err != nil {
					return err
				}
			} else if cfg.Binary, err = os.Executable(); err != nil {
				return fmt.Errorf("find the dalv binary to start: %w", err)
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if store != "" {
				return runPostgresBench(ctx, cmd, cfg, store, asJSON)
			}
			if against != "" {
				return runComparison(ctx, cmd, cfg, against, asJSON)
			}
			rep, err := bench.Run(ctx, cfg)
			if err != nil {
				return err
			}
			if asJSON {
				return rep.WriteJSON(cmd.OutOrStdout())
			}
			return rep.WriteTable(cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&cfg.Runs, "runs", bench.DefaultRuns, "runs of every scenario; the report gives the median, min and max")
	fl.DurationVar(&cfg.Duration, "duration", bench.DefaultDuration, "length of each throughput measurement")
	fl.DurationVar(&cfg.Warmup, "warmup", bench.DefaultWarmup, "unmeasured load before each throughput measurement (default with --store on Citus: 10s)")
	fl.IntVar(&cfg.Devices, "devices", bench.DefaultDevices, "concurrent devices syncing (and the floors' concurrency)")
	fl.IntVar(&cfg.Users, "users", 0, "users the devices are spread over (default: --devices, one device per user)")
	fl.Float64Var(&cfg.PacedRate, "paced-rate", bench.DefaultPacedRate, "offered syncs/s of the paced sync measurement, for latency at that load (negative: skip it)")
	fl.IntVar(&cfg.ValueBytes, "value-bytes", bench.DefaultValueBytes, "size of each PUT's value")
	fl.IntVar(&cfg.Keys, "keys", 1, "keys each syncing device cycles its PUTs over, so that its user's partition holds that many entries (the warm-up lasts until every device has PUT each of them)")
	fl.IntVar(&cfg.CatchupCommits, "catchup-commits", bench.DefaultCatchupCommits, "commits the catch-up device missed")
	fl.IntVar(&cfg.CatchupKeys, "catchup-keys", bench.DefaultCatchupKeys, "keys those commits cycle over")
	fl.IntVar(&cfg.CatchupPulls, "catchup-pulls", bench.DefaultCatchupPulls, "timed catch-up pulls per run")
	fl.IntVar(&cfg.Watchers, "watchers", bench.DefaultWatchers, "device watches the delivery scenario delivers to")
	fl.IntVar(&cfg.WatchUsers, "watch-users", 0, fmt.Sprintf("users the delivery scenario's watches and commits are spread over (default %d, at most --watchers)", bench.DefaultWatchUsers))
	fl.Float64Var(&cfg.DeliveryRate, "delivery-rate", bench.DefaultDeliveryRate, "backend commits/s of the delivery scenario, in all")
	fl.IntVar(&cfg.IdleWatchers, "idle-watchers", bench.DefaultIdleWatchers, "idle device watches the idle-watchers scenario opens")
	fl.IntVar(&cfg.IdleUsers, "idle-users", 0, fmt.Sprintf("users the idle watches are spread over (default %d, at most --idle-watchers)", bench.DefaultIdleUsers))
	fl.StringVar(&scenarios, "scenario", "all", "comma-separated scenarios to run: sync, catchup, floor, storage, delivery, idle-watchers, disk, or all")
	fl.StringVar(&serverArgs, "server-args", "", `extra flags for dalv serve, space-separated (e.g. "--max-ops 10")`)
	fl.StringVar(&rulesFile, "rules", "", "start dalv serve with this write rules file, to measure their CPU cost against a run without (bench/rules.yaml is one with a CEL check on the bench's keys)")
	fl.BoolVar(&cfg.H2C, "h2c", false, "speak HTTP/2 without TLS over one connection instead of HTTP/1.1 with one per device")
	fl.BoolVar(&cfg.Gzip, "gzip", false, "accept gzipped answers, as connect-go clients do by default")
	fl.StringVar(&cfg.Client, "client", "", `the load generator's client for the sync and floor loads: "lean" or "connect" (see above; default: lean, connect with --h2c or --gzip)`)
	fl.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fl.BoolVar(&cfg.KeepData, "keep-data", false, "keep the temporary data directories (for debugging)")
	fl.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the bench process to this file")
	fl.StringVar(&cfg.ServerProfile, "server-cpuprofile", "", "write a CPU profile of the server during the last run's sync measurement to this file")
	fl.StringVar(&cfg.URL, "url", "", "measure the running server at this URL (http:// or https://) instead of starting one")
	fl.StringVar(&cfg.CommitURL, "commit-url", "", "with --url: send the delivery scenario's commits to this other node over the same PostgreSQL, so they reach the watchers across nodes")
	fl.StringVar(&caFile, "ca-file", "", "with --url: "+caFileHelp)
	fl.StringVar(&against, "against", "", "measure this binary against the dalv binary at this path, alternately (see above)")
	fl.StringVar(&store, "store", "", "measure 1 and 3 `dalv serve --store` nodes over this PostgreSQL URL beside pgbench (see docs/postgres.md)")
	return cmd
}

// runComparison runs bench.Compare of cfg's binary against the binary at
// path and prints the comparison.
func runComparison(ctx context.Context, cmd *cobra.Command, cfg bench.Config, path string, asJSON bool) error {
	baseline, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if st, err := os.Stat(baseline); err != nil {
		return fmt.Errorf("--against: %w", err)
	} else if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("--against: %s is not an executable file", baseline)
	}
	comparison, err := bench.Compare(ctx, cfg, baseline)
	if err != nil {
		return err
	}
	if asJSON {
		return comparison.WriteJSON(cmd.OutOrStdout())
	}
	return comparison.WriteTable(cmd.OutOrStdout())
}
