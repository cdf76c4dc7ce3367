package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	neturl "net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/engine"
	"github.com/dalvdb/dalv/server"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/store/pebble"
	"github.com/dalvdb/dalv/store/postgres"
)

type serveFlags struct {
	addr, data, store string
	dev               bool
	systemPrefixes    []string
	shared            []string
	limits            engine.Limits
	maxRequestBytes   int
	rateLimit         float64
	rateBurst         int
	retention         time.Duration
	drainTimeout      time.Duration
	storeTimeout      time.Duration
	storeCacheBytes   int
	watchBuffer       int
	heartbeat         time.Duration
	logLevel, logForm string
	pprofAddr         string
	corsOrigins       []string
}

func newServeCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve [--addr HOST:PORT] [--data DIR | --store postgres://...]",
		Short: "Run the DalvDB server on an embedded store, or as one of many nodes over PostgreSQL",
		Long: `Run the DalvDB server on an embedded, crash-safe store in --data, or,
with --store postgres://... (or DALV_STORE), as one of any number of
stateless nodes over one PostgreSQL database: no data directory is used
then, and the schema is created or migrated at start (the URL's
search_path names its schema; pool_max_conns, application_name and the
other pgx parameters apply). See docs/postgres.md.

Secrets come from the environment: DALV_JWT_SECRET is the HS256 key device
tokens are signed with (at least 32 bytes); DALV_BACKEND_KEYS is a
comma-separated list of backend API keys (each at least 16 bytes). With
--dev, missing secrets are generated and printed once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runServe(ctx, cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", "127.0.0.1:7070", "address to listen on (port 0 picks a free one)")
	fl.StringVar(&f.data, "data", "./dalv-data", "data directory of the embedded store")
	fl.StringVar(&f.store, "store", "", "PostgreSQL URL (postgres://...) to serve from instead of --data; default $DALV_STORE")
	fl.DurationVar(&f.storeTimeout, "store-timeout", postgres.DefaultTimeout, "with --store: how long one store operation may wait for PostgreSQL before the request fails with unavailable")
	fl.IntVar(&f.storeCacheBytes, "store-cache-bytes", postgres.DefaultCacheBytes, "with --store: memory for the states of small partitions this node commits to, whose commits then go in grouped statements of one round trip (0 turns it off: every commit is a transaction of its own)")
	fl.BoolVar(&f.dev, "dev", false, "generate and print development secrets when DALV_JWT_SECRET or DALV_BACKEND_KEYS is unset")
	fl.StringArrayVar(&f.systemPrefixes, "system-prefix", nil, `key prefix that is system-domain (backend-only); repeatable (default "sys/")`)
	fl.StringArrayVar(&f.shared, "shared", nil, "shared partition NAME, or NAME=CLAIM:VALUE to let only tokens whose CLAIM holds VALUE read it; repeatable")
	fl.IntVar(&f.limits.MaxKeyBytes, "max-key-bytes", engine.DefaultMaxKeyBytes, "largest key, in bytes")
	fl.IntVar(&f.limits.MaxValueBytes, "max-value-bytes", engine.DefaultMaxValueBytes, "largest value, in bytes")
	fl.IntVar(&f.limits.MaxOps, "max-ops", engine.DefaultMaxOps, "most ops in one sync or commit")
	fl.IntVar(&f.limits.MaxResponseBytes, "max-response-bytes", engine.DefaultMaxResponseBytes, "largest answer; larger catch-ups come in pages")
	fl.IntVar(&f.maxRequestBytes, "max-request-bytes", server.DefaultMaxRequestBytes, "largest request body, in bytes")
	fl.Float64Var(&f.rateLimit, "rate-limit", server.DefaultRateLimit, "requests per second allowed per user (negative: no limit)")
	fl.IntVar(&f.rateBurst, "rate-burst", 0, "burst of requests allowed per user (default: the rate)")
	fl.DurationVar(&f.retention, "retention", server.DefaultRetention, "how long history and tombstones are kept; older base versions get a reset")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", server.DefaultDrainTimeout, "how long SIGTERM waits for in-flight requests")
	fl.IntVar(&f.watchBuffer, "watch-buffer", server.DefaultWatchBuffer, "commits a device watch may fall behind before it is ended as too slow")
	fl.DurationVar(&f.heartbeat, "heartbeat", server.DefaultHeartbeat, "how often idle streams get a keep-alive event")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logForm, "log-format", "text", "text or json")
	fl.StringArrayVar(&f.corsOrigins, "cors-origin", nil, `origin (https://app.example.com) whose browser pages may call the server; repeatable; "*" (any origin) only with --dev`)
	fl.StringVar(&f.pprofAddr, "pprof-addr", "", "serve net/http/pprof on this separate address (off by default; never expose it)")
	return cmd
}

func runServe(ctx context.Context, cmd *cobra.Command, f serveFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	log, err := newLogger(cmd.ErrOrStderr(), f.logLevel, f.logForm)
	if err != nil {
		return err
	}
	secret, keys, err := secrets(cmd, f.dev)
	if err != nil {
		return err
	}
	verifier, err := auth.NewHS256([]byte(secret), auth.HS256Options{})
	if err != nil {
		return fmt.Errorf("DALV_JWT_SECRET: %w", err)
	}
	// A device sends its token with every request: check each token once.
	verifier = auth.Cached(verifier, 0, nil)
	keySet, err := auth.NewKeySet(keys)
	if err != nil {
		return fmt.Errorf("DALV_BACKEND_KEYS: %w", err)
	}
	shared, err := parseShared(f.shared)
	if err != nil {
		return err
	}
	var prefixes []string
	if cmd.Flags().Changed("system-prefix") {
		prefixes = f.systemPrefixes
	}

	st, where, err := openStore(ctx, f, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("close store", "err", err)
		}
	}()

	srv, err := server.New(server.Config{
		Store:           st,
		Verifier:        verifier,
		BackendKeys:     keySet,
		SystemPrefixes:  prefixes,
		Shared:          shared,
		Limits:          f.limits,
		MaxRequestBytes: f.maxRequestBytes,
		RateLimit:       f.rateLimit,
		RateBurst:       f.rateBurst,
		Retention:       f.retention,
		DrainTimeout:    f.drainTimeout,
		WatchBuffer:     f.watchBuffer,
		Heartbeat:       f.heartbeat,
		Logger:          log,
		CORSOrigins:     f.corsOrigins,
	})
	if err != nil {
		return err
	}
	if f.pprofAddr != "" {
		stopPprof, err := servePprof(ctx, cmd, f.pprofAddr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.addr, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "DalvDB listening on http://%s (%s)\n", ln.Addr(), where)
	log.Info("serving", "addr", ln.Addr().String(), "store", where)
	if err := srv.Serve(ctx, ln); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// openStore opens the store of --store (or $DALV_STORE) when one is given,
// else the embedded store in --data. where says which, for people: it
// never shows a password.
func openStore(ctx context.Context, f serveFlags, log *slog.Logger) (st store.Store, where string, err error) {
	url := f.store
	if url == "" {
		url = os.Getenv("DALV_STORE")
	}
	if url == "" {
		ps, err := pebble.Open(f.data, pebble.Options{Logger: log})
		if err != nil {
			if errors.Is(err, store.ErrLocked) {
				return nil, "", fmt.Errorf("%w\nis another dalv serve running on it? stop it or choose another --data", err)
			}
			return nil, "", fmt.Errorf("open store: %w", err)
		}
		return ps, "data in " + f.data, nil
	}
	if !strings.HasPrefix(url, "postgres://") && !strings.HasPrefix(url, "postgresql://") {
		return nil, "", fmt.Errorf("--store %q: give a PostgreSQL URL, postgres://USER@HOST:PORT/DATABASE (or leave it out for the embedded store in --data)", redactURL(url))
	}
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cacheBytes := f.storeCacheBytes
	if cacheBytes == 0 {
		cacheBytes = -1 // Options' "none"
	}
	ps, err := postgres.Open(octx, url, postgres.Options{Logger: log, Timeout: f.storeTimeout, CacheBytes: cacheBytes})
	if err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			return nil, "", fmt.Errorf("open store: %w\nis PostgreSQL running and reachable at the --store URL (DALV_STORE)?", err)
		}
		return nil, "", fmt.Errorf("open store: %w", err)
	}
	return ps, "store " + redactURL(url), nil
}

// redactURL is url without its password.
func redactURL(u string) string {
	pu, err := neturl.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return pu.Redacted()
}

// servePprof serves the runtime profiles of net/http/pprof on their own
// listener, so they are never reachable through the API's address. It
// prints the address before the server's listening line.
func servePprof(ctx context.Context, cmd *cobra.Command, addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(cmd.OutOrStdout(), "pprof listening on http://%s/debug/pprof/\n", ln.Addr())
	log.Warn("serving pprof: profiles expose the process's internals", "addr", ln.Addr().String())
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof listener", "err", err)
		}
	}()
	return func() { _ = hs.Close() }, nil
}

// secrets reads DALV_JWT_SECRET and DALV_BACKEND_KEYS, generating and
// printing the missing ones with --dev.
func secrets(cmd *cobra.Command, dev bool) (string, []string, error) {
	secret := os.Getenv("DALV_JWT_SECRET")
	var keys []string
	for _, k := range strings.Split(os.Getenv("DALV_BACKEND_KEYS"), ",") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	if secret != "" && len(keys) > 0 {
		return secret, keys, nil
	}
	if !dev {
		var missing []string
		if secret == "" {
			missing = append(missing, "DALV_JWT_SECRET (the HS256 key device tokens are signed with, 32 bytes or more)")
		}
		if len(keys) == 0 {
			missing = append(missing, "DALV_BACKEND_KEYS (comma-separated backend API keys, 16 bytes or more each)")
		}
		return "", nil, fmt.Errorf("missing secrets: set %s in the environment, or run `dalv serve --dev` to generate development secrets", strings.Join(missing, " and "))
	}
	out := cmd.OutOrStdout()
	fmt.Fprintln(out, "Development secrets (shown once; export them to use dalv token and the backend API):")
	if secret == "" {
		s, err := auth.GenerateSecret(32)
		if err != nil {
			return "", nil, err
		}
		secret = s
		fmt.Fprintf(out, "  export DALV_JWT_SECRET=%s\n", secret)
	}
	if len(keys) == 0 {
		k, err := auth.GenerateSecret(24)
		if err != nil {
			return "", nil, err
		}
		keys = []string{k}
		fmt.Fprintf(out, "  export DALV_BACKEND_KEYS=%s DALV_BACKEND_KEY=%s\n", k, k)
	}
	return secret, keys, nil
}

// validate refuses sizes and durations the server would otherwise replace
// by its defaults without a word.
func (f serveFlags) validate() error {
	for _, o := range f.corsOrigins {
		if err := validOrigin(o, f.dev); err != nil {
			return err
		}
	}
	for _, fl := range []struct {
		name string
		n    int
	}{
		{"--max-key-bytes", f.limits.MaxKeyBytes},
		{"--max-value-bytes", f.limits.MaxValueBytes},
		{"--max-ops", f.limits.MaxOps},
		{"--max-response-bytes", f.limits.MaxResponseBytes},
		{"--max-request-bytes", f.maxRequestBytes},
	} {
		if fl.n < 1 {
			return fmt.Errorf("%s %d: must be at least 1", fl.name, fl.n)
		}
	}
	if f.rateBurst < 0 {
		return fmt.Errorf("--rate-burst %d: must be 0 (the rate) or more", f.rateBurst)
	}
	if f.retention <= 0 {
		return fmt.Errorf("--retention %v: must be positive", f.retention)
	}
	if f.storeTimeout <= 0 {
		return fmt.Errorf("--store-timeout %v: must be positive", f.storeTimeout)
	}
	if f.storeCacheBytes < 0 {
		return fmt.Errorf("--store-cache-bytes %d: must be 0 (off) or more", f.storeCacheBytes)
	}
	if f.drainTimeout <= 0 {
		return fmt.Errorf("--drain-timeout %v: must be positive", f.drainTimeout)
	}
	if f.watchBuffer < 1 {
		return fmt.Errorf("--watch-buffer %d: must be at least 1", f.watchBuffer)
	}
	if f.heartbeat <= 0 {
		return fmt.Errorf("--heartbeat %v: must be positive", f.heartbeat)
	}
	return f.limits.Validate()
}

// parseShared reads --shared NAME and NAME=CLAIM:VALUE.
func parseShared(specs []string) ([]server.SharedPartition, error) {
	var out []server.SharedPartition
	for _, spec := range specs {
		name, gate, gated := strings.Cut(spec, "=")
		if name == "" {
			return nil, fmt.Errorf("--shared %q: the name is empty", spec)
		}
		sp := server.SharedPartition{Name: name}
		if gated {
			claim, val, ok := strings.Cut(gate, ":")
			if !ok || claim == "" || val == "" {
				return nil, fmt.Errorf("--shared %q: write NAME or NAME=CLAIM:VALUE, as in beta=tier:beta", spec)
			}
			sp.Claim, sp.Value = claim, val
		}
		out = append(out, sp)
	}
	return out, nil
}

func newLogger(w interface{ Write([]byte) (int, error) }, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", format)
}

// validOrigin checks a --cors-origin: a scheme and host without a path, or
// "*", which lets pages of any site call the server and so only goes with --dev.
func validOrigin(o string, dev bool) error {
	if o == "*" {
		if !dev {
			return errors.New(`--cors-origin "*" lets any web site's pages call the server: it is allowed only with --dev; name the origins instead`)
		}
		return nil
	}
	u, err := neturl.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("--cors-origin %q: want an origin such as https://app.example.com (scheme and host, no path)", o)
	}
	return nil
}
