package main

import (
	"context"
	"crypto/tls"
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

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/internal/devsecret"
	"github.com/dalvdb/dalv/internal/diskfault"
	"github.com/dalvdb/dalv/rules"
	"github.com/dalvdb/dalv/server"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/store/pebble"
	"github.com/dalvdb/dalv/store/postgres"
	"github.com/dalvdb/dalv/value"
)

type serveFlags struct {
	addr, data, store string
	dev               bool
	systemPrefixes    []string
	shared            []string
	limits            value.Limits
	maxRequestBytes   int
	bodyTimeout       time.Duration
	maxConnections    int
	rateLimit         float64
	rateBurst         int
	retention         time.Duration
	drainTimeout      time.Duration
	storeTimeout      time.Duration
	storeCacheBytes   int
	cacheBytes        int
	memtableBytes     int
	walSyncInterval   time.Duration
	watchBuffer       int
	heartbeat         time.Duration
	maxWatchesUser    int
	maxWatchesDevice  int
	maxFeedWatches    int
	streamWrite       time.Duration
	streamPageBytes   int
	logLevel, logForm string
	pprofAddr         string
	tokens            tokenFlags
	tlsCert, tlsKey   string
	tlsSelfSigned     bool
	rulesFile         string
	rulesPoll         time.Duration
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
then (but --dev keeps its secrets in --data), and the schema is created
or migrated at start (the URL's search_path names its schema;
pool_max_conns, application_name and the other pgx parameters apply). See
docs/postgres.md.

Secrets come from the environment: DALV_JWT_SECRET is the HS256 key device
tokens are signed with (at least 32 bytes); DALV_BACKEND_KEYS is a
comma-separated list of backend API keys (each at least 16 bytes). With
--dev, missing secrets come from the file dev-secrets.env in --data
(also with --store), generated on the first start and reused after a
restart, so tokens stay valid; they are printed at each start, once the
server listens. dalv token and the operator commands find them there.
With public-key tokens (--jwt-public-key, --jwks-url) DALV_JWT_SECRET is
optional: set, it keeps HS256 tokens working beside them.

With --tls-cert and --tls-key it serves HTTPS (HTTP/2 and HTTP/1.1, TLS
1.2 at least), rereading both files when they change or on SIGHUP; with
--dev --tls-self-signed, HTTPS with a certificate for localhost kept in
--data, whose file clients trust by --ca-file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runServe(ctx, cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", "127.0.0.1:7070", "address to listen on (port 0 picks a free one)")
	fl.StringVar(&f.data, "data", defaultData, "data directory of the embedded store, and where --dev keeps its secrets")
	fl.StringVar(&f.store, "store", "", "PostgreSQL URL (postgres://...) to serve from instead of --data; default $DALV_STORE")
	fl.DurationVar(&f.storeTimeout, "store-timeout", postgres.DefaultTimeout, "with --store: how long one store operation may wait for PostgreSQL before the request fails with unavailable")
	fl.IntVar(&f.cacheBytes, "cache-bytes", pebble.DefaultCacheSize, "the embedded store's block cache, in bytes")
	fl.IntVar(&f.memtableBytes, "memtable-bytes", pebble.DefaultMemTableSize, "the embedded store's memtable, in bytes, of which it holds up to two (one filling, one being written out); 1 MiB to 1 GiB")
	fl.DurationVar(&f.walSyncInterval, "wal-min-sync-interval", pebble.DefaultWALMinSyncInterval, fmt.Sprintf("the embedded store's least time between two fsyncs of its log while commits come from more than one writer, so that more commits share each (each still answered only once its own fsync has ended); 0 to %v, 0 turns it off", pebble.MaxWALMinSyncInterval))
	fl.IntVar(&f.storeCacheBytes, "store-cache-bytes", postgres.DefaultCacheBytes, "with --store: memory for the states of small partitions this node commits to, whose commits then go in grouped statements of one round trip (0 turns it off: every commit is a transaction of its own)")
	fl.BoolVar(&f.dev, "dev", false, "when DALV_JWT_SECRET or DALV_BACKEND_KEYS is unset, use development secrets kept in --data (generated on the first start), and print them")
	fl.StringArrayVar(&f.systemPrefixes, "system-prefix", nil, `key prefix that is system-domain (backend-only); repeatable (default "sys/")`)
	fl.StringArrayVar(&f.shared, "shared", nil, "shared partition NAME, or NAME=CLAIM:VALUE to let only tokens whose CLAIM holds VALUE read it; repeatable")
	fl.IntVar(&f.limits.MaxKeyBytes, "max-key-bytes", value.DefaultMaxKeyBytes, "largest key, in bytes")
	fl.IntVar(&f.limits.MaxValueBytes, "max-value-bytes", value.DefaultMaxValueBytes, "largest value, in bytes")
	fl.IntVar(&f.limits.MaxOps, "max-ops", value.DefaultMaxOps, "most ops in one sync or commit")
	fl.IntVar(&f.limits.MaxResponseBytes, "max-response-bytes", value.DefaultMaxResponseBytes, "largest answer; larger catch-ups come in pages")
	fl.IntVar(&f.maxRequestBytes, "max-request-bytes", value.DefaultMaxRequestBytes, "largest request body, in bytes")
	fl.DurationVar(&f.bodyTimeout, "body-timeout", server.DefaultBodyTimeout, "how long a request's body may take to arrive after its headers")
	fl.IntVar(&f.maxConnections, "max-connections", 0, fmt.Sprintf("most open client connections; past it idle ones are closed to make room, else new ones wait a second and are refused (0: derived from the open-file limit, here %d)", server.DefaultMaxConnections()))
	fl.Float64Var(&f.rateLimit, "rate-limit", server.DefaultRateLimit, "requests per second allowed per user (negative: no limit)")
	fl.IntVar(&f.rateBurst, "rate-burst", 0, "burst of requests allowed per user (default: the rate)")
	fl.DurationVar(&f.retention, "retention", server.DefaultRetention, "how long history and tombstones are kept; older base versions get a reset")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", server.DefaultDrainTimeout, "how long SIGTERM waits for in-flight requests")
	fl.IntVar(&f.watchBuffer, "watch-buffer", server.DefaultWatchBuffer, "commits a device watch may fall behind before it is ended as too slow")
	fl.DurationVar(&f.heartbeat, "heartbeat", server.DefaultHeartbeat, "how often idle streams get a keep-alive event")
	fl.IntVar(&f.maxWatchesUser, "max-watches-per-user", server.DefaultMaxWatchesPerUser, "device watches one user may have open at once")
	fl.IntVar(&f.maxWatchesDevice, "max-watches-per-device", server.DefaultMaxWatchesPerDevice, "device watches one device of a user may have open at once")
	fl.IntVar(&f.maxFeedWatches, "max-feed-watches", server.DefaultMaxFeedWatches, "backend change-feed watches open at once, in all")
	fl.DurationVar(&f.streamWrite, "stream-write-timeout", server.DefaultStreamWriteTimeout, "how long one stream message may wait to be written before the stream ends as too slow")
	fl.IntVar(&f.streamPageBytes, "stream-page-bytes", server.DefaultStreamPageBytes, "changes a watch or feed catch-up reads and sends at once (a larger commit goes whole); bounds a stream's memory")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logForm, "log-format", "text", "text or json")
	f.tokens.register(fl)
	fl.StringVar(&f.tlsCert, "tls-cert", "", "serve HTTPS (HTTP/2 and HTTP/1.1, TLS 1.2 at least) with the certificate chain in this PEM `FILE`; reloaded when it changes or on SIGHUP")
	fl.StringVar(&f.tlsKey, "tls-key", "", "the private key (PEM `FILE`) of --tls-cert")
	fl.BoolVar(&f.tlsSelfSigned, "tls-self-signed", false, "with --dev: serve HTTPS with a self-signed certificate for localhost kept in --data (generated on the first start), and print the file clients trust it by")
	fl.StringVar(&f.rulesFile, "rules", "", "write rules file (YAML or JSON): every write is checked against it; reloaded on SIGHUP and when the file changes (see dalv rules check)")
	fl.DurationVar(&f.rulesPoll, "rules-poll", defaultRulesPoll, "with --rules: how often the rules file's modification time is looked at; over PostgreSQL, also how often the nodes' rules are compared")
	fl.StringArrayVar(&f.corsOrigins, "cors-origin", nil, `origin (https://app.example.com) whose browser pages may call the server; repeatable; "*" (any origin) only with --dev`)
	fl.StringVar(&f.pprofAddr, "pprof-addr", "", "serve net/http/pprof on this separate address (off by default; never expose it)")
	return cmd
}

func runServe(ctx context.Context, cmd *cobra.Command, f serveFlags) (err error) {
	if err := f.validate(); err != nil {
		return err
	}
	log, err := newLogger(cmd.ErrOrStderr(), f.logLevel, f.logForm)
	if err != nil {
		return err
	}
	// Listen first: a server that cannot listen neither keeps nor prints
	// development secrets. Serve closes ln; so does an earlier failure.
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.addr, err)
	}
	defer ln.Close()
	secret, keys, devNote, err := secrets(f, !f.tokens.publicKeysOn())
	if err != nil {
		return err
	}
	verifier, err := deviceVerifier(ctx, f.tokens, secret, log)
	if err != nil {
		return err
	}
	keySet, err := auth.NewKeySet(keys)
	if err != nil {
		return fmt.Errorf("DALV_BACKEND_KEYS: %w", err)
	}
	shared, err := parseShared(f.shared)
	if err != nil {
		return err
	}
	tlsConf, scheme, tlsNote, err := serveTLS(ctx, f, log)
	if err != nil {
		return err
	}
	devNote += tlsNote
	var prefixes []string
	if cmd.Flags().Changed("system-prefix") {
		prefixes = f.systemPrefixes
	}
	var ruleSet *rules.Set
	var rulesInfo os.FileInfo
	if f.rulesFile != "" {
		if ruleSet, rulesInfo, err = loadRules(f.rulesFile); err != nil {
			return err
		}
	}
	reg := prometheus.NewRegistry()

	st, where, err := openStore(ctx, f, log)
	if err != nil {
		return err
	}
	defer func() {
		// A store that does not close cleanly fails the exit, so an
		// operator or a test sees it.
		if cerr := st.Close(); cerr != nil {
			log.Error("close store", "err", cerr)
			err = errors.Join(err, cerr)
		}
	}()

	cfg := f.config()
	cfg.Store, cfg.Verifier, cfg.BackendKeys = st, verifier, keySet
	cfg.SystemPrefixes, cfg.Shared, cfg.Logger = prefixes, shared, log
	cfg.TLS, cfg.Rules, cfg.Registry = tlsConf, ruleSet, reg
	cfg.CORSOrigins = f.corsOrigins
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	if ruleSet != nil {
		rl := newRulesReloader(f.rulesFile, rulesInfo, srv.SetRules, srv.RulesHash, reg, log)
		go rl.run(ctx, f.rulesPoll)
		log.Info("write rules in force", "file", f.rulesFile, "hash", srv.RulesHash())
	}
	if ps, ok := st.(rulesPeers); ok {
		go newPeerRules(ps, srv.RulesHash, reg, log).run(ctx, f.rulesPoll)
	}
	if f.pprofAddr != "" {
		stopPprof, err := servePprof(ctx, cmd, f.pprofAddr, log)
		if err != nil {
			return err
		}
		defer stopPprof()
	}
	fmt.Fprint(cmd.OutOrStdout(), devNote)
	fmt.Fprintf(cmd.OutOrStdout(), "DalvDB listening on %s://%s (%s)\n", scheme, ln.Addr(), where)
	log.Info("serving", "addr", ln.Addr().String(), "store", where)
	if err := srv.Serve(ctx, ln); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// serveTLS loads --tls-cert and --tls-key, or with --dev --tls-self-signed
// the development certificate in --data, and keeps them current until ctx
// is done: polled for changes, and reloaded on SIGHUP. It returns the
// server's TLS configuration (nil without TLS), the URL scheme, and what to
// print about a development certificate.
func serveTLS(ctx context.Context, f serveFlags, log *slog.Logger) (conf *tls.Config, scheme, note string, err error) {
	certFile, keyFile := f.tlsCert, f.tlsKey
	switch {
	case f.tlsSelfSigned && !f.dev:
		return nil, "", "", errors.New("--tls-self-signed is for development: give it with --dev, or give --tls-cert and --tls-key")
	case f.tlsSelfSigned && (certFile != "" || keyFile != ""):
		return nil, "", "", errors.New("--tls-self-signed and --tls-cert/--tls-key exclude each other: choose one")
	case f.tlsSelfSigned:
		var created bool
		if certFile, keyFile, created, err = devsecret.LoadOrCreateCert(f.data, time.Now()); err != nil {
			return nil, "", "", err
		}
		how := "kept in"
		if created {
			how = "new, kept in"
		}
		note = fmt.Sprintf("Development TLS certificate (self-signed for localhost, 127.0.0.1 and ::1; %s %s):\n  trust it with --ca-file %[2]s (DALV_CA_FILE, curl --cacert)\n", how, certFile)
	case certFile == "" && keyFile == "":
		return nil, "http", "", nil
	case certFile == "" || keyFile == "":
		return nil, "", "", errors.New("--tls-cert and --tls-key go together: give both, or neither for plain HTTP")
	}
	cf, err := server.LoadCertFiles(certFile, keyFile, log)
	if err != nil {
		return nil, "", "", err
	}
	fingerprint := server.CertFingerprint(cf.Certificate())
	if note != "" {
		note += "  SHA-256 fingerprint " + fingerprint + "\n"
	}
	log.Info("TLS", "cert", certFile, "sha256", fingerprint)
	go cf.Watch(ctx, server.DefaultCertPoll)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				cf.ReloadAndLog()
			}
		}
	}()
	return &tls.Config{GetCertificate: cf.GetCertificate}, "https", note, nil
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
		opts := pebble.Options{Logger: log, CacheSize: int64(f.cacheBytes), MemTableSize: int64(f.memtableBytes), WALMinSyncInterval: f.walSyncInterval}
		if f.walSyncInterval == 0 {
			opts.WALMinSyncInterval = -1 // off; the Options' zero is the default
		}
		if trigger := os.Getenv(diskfault.EnvVar); trigger != "" {
			// For tests only: see package diskfault.
			log.Warn("TEST MODE: disk faults are injected into the store from a trigger file", "env", diskfault.EnvVar, "trigger", trigger)
			opts.FS = diskfault.TriggerFS(vfs.Default, trigger)
		}
		ps, err := pebble.Open(f.data, opts)
		if err != nil {
			if errors.Is(err, pebble.ErrLocked) {
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

// secrets reads DALV_JWT_SECRET and DALV_BACKEND_KEYS. With --dev, those
// the environment lacks come from the development secrets kept in --data
// (generated there on the first start), and note is what to print about
// them: export lines, and where they are kept. The HS256 secret may be
// missing when needSecret is false (public-key tokens are configured):
// HS256 is then off, unless --dev supplies one.
func secrets(f serveFlags, needSecret bool) (secret string, keys []string, note string, err error) {
	secret = os.Getenv("DALV_JWT_SECRET")
	keys = devsecret.SplitKeys(os.Getenv("DALV_BACKEND_KEYS"))
	if (secret != "" || !needSecret) && len(keys) > 0 && !(f.dev && secret == "") {
		return secret, keys, "", nil
	}
	if !f.dev {
		var missing []string
		if secret == "" && needSecret {
			missing = append(missing, "DALV_JWT_SECRET (the HS256 key device tokens are signed with, 32 bytes or more)")
		}
		if len(keys) == 0 {
			missing = append(missing, "DALV_BACKEND_KEYS (comma-separated backend API keys, 16 bytes or more each)")
		}
		return "", nil, "", fmt.Errorf("missing secrets: set %s in the environment, or run `dalv serve --dev` to generate development secrets", strings.Join(missing, " and "))
	}
	dev, created, err := devsecret.LoadOrCreate(f.data)
	if err != nil {
		return "", nil, "", err
	}
	var b strings.Builder
	how := "kept in"
	if created {
		how = "new, kept in"
	}
	fmt.Fprintf(&b, "Development secrets (%s %s", how, devsecret.Path(f.data))
	if f.store != "" || os.Getenv("DALV_STORE") != "" {
		b.WriteString(", the --data directory, also with --store")
	}
	b.WriteString("; a restart reuses them):\n")
	if secret == "" {
		secret = dev.JWTSecret
		fmt.Fprintf(&b, "  export DALV_JWT_SECRET=%s\n", secret)
	}
	if len(keys) == 0 {
		keys = dev.BackendKeys
		fmt.Fprintf(&b, "  export DALV_BACKEND_KEYS=%s DALV_BACKEND_KEY=%s\n", strings.Join(keys, ","), keys[0])
	}
	if f.data == defaultData {
		b.WriteString("`dalv token` and the operator commands run in this directory find them there.\n")
	} else {
		fmt.Fprintf(&b, "`dalv token` and the operator commands find them there with --data %s.\n", f.data)
	}
	return secret, keys, b.String(), nil
}

// validate refuses flags set to 0 where 0 is the server's default only in
// its Go configuration (a flag's default is shown in its help instead), and
// the store's flags; the server's own rules come from server.Config.Check.
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
		{"--max-watches-per-user", f.maxWatchesUser},
		{"--max-watches-per-device", f.maxWatchesDevice},
		{"--max-feed-watches", f.maxFeedWatches},
		{"--stream-page-bytes", f.streamPageBytes},
		{"--cache-bytes", f.cacheBytes},
	} {
		if fl.n < 1 {
			return fmt.Errorf("%s %d: must be at least 1", fl.name, fl.n)
		}
	}
	if f.bodyTimeout <= 0 {
		return fmt.Errorf("--body-timeout %v: must be positive", f.bodyTimeout)
	}
	if f.retention <= 0 {
		return fmt.Errorf("--retention %v: must be positive", f.retention)
	}
	if f.storeTimeout <= 0 {
		return fmt.Errorf("--store-timeout %v: must be positive", f.storeTimeout)
	}
	if f.memtableBytes < 1<<20 || f.memtableBytes > 1<<30 {
		return fmt.Errorf("--memtable-bytes %d: must be from 1 MiB (1048576) to 1 GiB", f.memtableBytes)
	}
	if f.walSyncInterval < 0 || f.walSyncInterval > pebble.MaxWALMinSyncInterval {
		return fmt.Errorf("--wal-min-sync-interval %v: must be from 0 (off) to %v", f.walSyncInterval, pebble.MaxWALMinSyncInterval)
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
	if f.rulesPoll <= 0 {
		return fmt.Errorf("--rules-poll %v: must be positive", f.rulesPoll)
	}
	if f.streamWrite <= 0 {
		return fmt.Errorf("--stream-write-timeout %v: must be positive", f.streamWrite)
	}
	return f.config().Check()
}

// config is the server configuration of the flags, without the store,
// the keys, the shared partitions, TLS and the rules.
func (f serveFlags) config() server.Config {
	return server.Config{
		Limits:              f.limits,
		MaxRequestBytes:     f.maxRequestBytes,
		BodyTimeout:         f.bodyTimeout,
		MaxConnections:      f.maxConnections,
		RateLimit:           f.rateLimit,
		RateBurst:           f.rateBurst,
		Retention:           f.retention,
		DrainTimeout:        f.drainTimeout,
		WatchBuffer:         f.watchBuffer,
		Heartbeat:           f.heartbeat,
		MaxWatchesPerUser:   f.maxWatchesUser,
		MaxWatchesPerDevice: f.maxWatchesDevice,
		MaxFeedWatches:      f.maxFeedWatches,
		StreamWriteTimeout:  f.streamWrite,
		StreamPageBytes:     f.streamPageBytes,
	}
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
