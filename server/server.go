// Package server serves DalvDB's dalv.v1 protocol over ConnectRPC (Connect,
// gRPC and gRPC-Web on one port: HTTP/1.1 and h2c, or with TLS HTTPS with
// HTTP/2 by ALPN and HTTP/1.1), plus GET /healthz and GET /metrics. It
// authenticates devices by JWT and backends by API key, from a request's
// headers before any of its body is read, enforces limits (on requests, on
// the time a body may take to arrive, on open connections),
// runs package engine's rules over a store, and is the only place that
// speaks Connect codes (see errors.go). A Server can be started in a test
// process as well as by `dalv serve`.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/singleflight"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/rules"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// Config configures a Server. Zero fields take the documented defaults; a
// negative size, count or duration is refused by New with an error naming
// the field, except RateLimit, where negative means no limit.
type Config struct {
	// Store holds the data. Required. The Server does not close it.
	Store store.Store
	// Verifier checks device tokens. Required.
	Verifier auth.Verifier
	// BackendKeys are the accepted backend API keys. Required.
	BackendKeys *auth.KeySet
	// SystemPrefixes are the system-domain key prefixes; nil means "sys/".
	SystemPrefixes []string
	// Shared are the shared partitions devices may read.
	Shared []SharedPartition
	// Limits are the engine's limits.
	Limits value.Limits
	// MaxRequestBytes bounds a request body (default 8 MiB).
	MaxRequestBytes int
	// BodyTimeout bounds the time from a request's headers to the end of
	// its body (default 15s); a body still arriving then is cut off with
	// deadline_exceeded. What follows the body (a stream's messages, the
	// answer) is not bounded by it.
	BodyTimeout time.Duration
	// MaxConnections caps the open connections (0: DefaultMaxConnections,
	// derived from the file limit). Past it, idle keep-alive connections
	// are closed to make room; with none, a new connection waits up to
	// ConnectionWait (default 1s) for room and is then closed unanswered.
	MaxConnections int
	ConnectionWait time.Duration
	// RateLimit is the sustained requests per second allowed per user (0:
	// DefaultRateLimit; negative: no limit); RateBurst the burst (default
	// the rate, at least 1).
	RateLimit float64
	RateBurst int
	// Retention is how long history and tombstones are kept (default 7
	// days); CompactEvery how often compaction runs (default retention/100,
	// at least a second, at most an hour).
	Retention    time.Duration
	CompactEvery time.Duration
	// WatchBuffer is how many commits a watch may fall behind before it is
	// ended with resource_exhausted (default 64).
	WatchBuffer int
	// Heartbeat is how often an idle stream gets a keep-alive event
	// (default 15s).
	Heartbeat time.Duration
	// MaxWatchesPerUser and MaxWatchesPerDevice bound the device watches
	// open at once for one user and for one device of a user (defaults 64
	// and 8); past them a watch is refused with resource_exhausted.
	MaxWatchesPerUser   int
	MaxWatchesPerDevice int
	// MaxFeedWatches bounds the backend change-feed watches open at once
	// (default 64).
	MaxFeedWatches int
	// StreamWriteTimeout bounds the wait to write one stream message; past
	// it the stream ends as too slow (default 10s).
	StreamWriteTimeout time.Duration
	// StreamPageBytes bounds the changes a stream reads and sends at once
	// in a catch-up (default 64 KiB, at most Limits.MaxResponseBytes); a
	// single commit larger than that goes whole.
	StreamPageBytes int
	// DrainTimeout bounds the wait for in-flight requests on shutdown
	// (default 10s).
	DrainTimeout time.Duration
	// TLS, when set, makes Serve speak HTTPS: HTTP/2 (negotiated by ALPN,
	// for gRPC and browsers) and HTTP/1.1, TLS 1.2 at least (a zero
	// MinVersion means 1.2; a lower one is refused). It needs a certificate
	// source; [CertFiles.GetCertificate] reloads one from files. Nil: plain
	// HTTP/1.1 and h2c. The server copies it; NextProtos are its own.
	TLS *tls.Config
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Rules are the write rules every sync and commit is checked against;
	// nil means none. SetRules replaces them.
	Rules *rules.Set
	// Registry receives the metrics; nil makes a new one, served on /metrics.
	Registry *prometheus.Registry
	// CORSOrigins are the origins whose browser pages may call the server
	// (Connect, gRPC-Web and streaming requests, with their preflights);
	// "*" allows any origin. Empty: no CORS headers are sent, so only pages
	// of the server's own origin can call it.
	CORSOrigins []string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// SharedPartition is a named partition that belongs to no user. Devices may
// read it: all of them, or, when Claim is set, those whose token's claim
// Claim holds Value.
type SharedPartition struct {
	Name  string
	Claim string
	Value string
}

// Defaults.
const (
	DefaultBodyTimeout    = 15 * time.Second
	DefaultConnectionWait = time.Second
	DefaultRateLimit      = 1000
	DefaultRetention      = 7 * 24 * time.Hour
	DefaultDrainTimeout   = 10 * time.Second
	DefaultWatchBuffer    = 64
	DefaultHeartbeat      = 15 * time.Second
	// A device keeps one watch of its own partition and one per shared
	// partition it reads, plus one that replaces a broken one before the
	// server notices the break; a user has a handful of devices, browser
	// tabs among them.
	DefaultMaxWatchesPerDevice = 8
	DefaultMaxWatchesPerUser   = 64
	// Backends are few and trusted: the bound is against leaks.
	DefaultMaxFeedWatches     = 64
	DefaultStreamWriteTimeout = 10 * time.Second
	DefaultStreamPageBytes    = 64 << 10
)

// Server is a DalvDB server over one store.
type Server struct {
	cfg      Config
	log      *slog.Logger
	eng      *engine.Engine
	metrics  *metrics
	limiter  *rateLimiter
	handler  http.Handler
	shared   map[string]SharedPartition
	health   *grpchealth.StaticChecker
	hub      *hub
	watches  watchCounts
	notifier store.Notifier                // when the store is shared with other processes
	remote   *remoteCommits                // with notifier: its listener, while streams need it
	pulls    singleflight.Group            // the watches' shared reads (see sharedPull)
	conns    atomic.Pointer[limitListener] // of the running Serve, for the metrics
	drain    chan struct{}                 // closed when shutdown begins: streams end
	draining atomic.Bool
}

// Check reports what New would refuse in cfg's sizes, counts, durations and
// limits, without needing its Store: a negative value (an error naming the
// field and its dalv serve flag), or limits that cannot hold one key and
// value in an answer.
func (cfg Config) Check() error {
	for _, f := range []struct {
		name, flag string
		v          any
		neg        bool
		zero       string
	}{
		{"MaxRequestBytes", "--max-request-bytes", cfg.MaxRequestBytes, cfg.MaxRequestBytes < 0, "the default"},
		{"BodyTimeout", "--body-timeout", cfg.BodyTimeout, cfg.BodyTimeout < 0, "the default"},
		{"MaxConnections", "--max-connections", cfg.MaxConnections, cfg.MaxConnections < 0, "derived from the open-file limit"},
		{"ConnectionWait", "", cfg.ConnectionWait, cfg.ConnectionWait < 0, "the default"},
		{"RateBurst", "--rate-burst", cfg.RateBurst, cfg.RateBurst < 0, "the rate"},
		{"Retention", "--retention", cfg.Retention, cfg.Retention < 0, "the default"},
		{"CompactEvery", "", cfg.CompactEvery, cfg.CompactEvery < 0, "the default"},
		{"WatchBuffer", "--watch-buffer", cfg.WatchBuffer, cfg.WatchBuffer < 0, "the default"},
		{"Heartbeat", "--heartbeat", cfg.Heartbeat, cfg.Heartbeat < 0, "the default"},
		{"DrainTimeout", "--drain-timeout", cfg.DrainTimeout, cfg.DrainTimeout < 0, "the default"},
		{"MaxWatchesPerUser", "--max-watches-per-user", cfg.MaxWatchesPerUser, cfg.MaxWatchesPerUser < 0, "the default"},
		{"MaxWatchesPerDevice", "--max-watches-per-device", cfg.MaxWatchesPerDevice, cfg.MaxWatchesPerDevice < 0, "the default"},
		{"MaxFeedWatches", "--max-feed-watches", cfg.MaxFeedWatches, cfg.MaxFeedWatches < 0, "the default"},
		{"StreamWriteTimeout", "--stream-write-timeout", cfg.StreamWriteTimeout, cfg.StreamWriteTimeout < 0, "the default"},
		{"StreamPageBytes", "--stream-page-bytes", cfg.StreamPageBytes, cfg.StreamPageBytes < 0, "the default"},
		{"Limits.MaxKeyBytes", "--max-key-bytes", cfg.Limits.MaxKeyBytes, cfg.Limits.MaxKeyBytes < 0, "the default"},
		{"Limits.MaxValueBytes", "--max-value-bytes", cfg.Limits.MaxValueBytes, cfg.Limits.MaxValueBytes < 0, "the default"},
		{"Limits.MaxOps", "--max-ops", cfg.Limits.MaxOps, cfg.Limits.MaxOps < 0, "the default"},
		{"Limits.MaxResponseBytes", "--max-response-bytes", cfg.Limits.MaxResponseBytes, cfg.Limits.MaxResponseBytes < 0, "the default"},
	} {
		if f.neg {
			name := f.name
			if f.flag != "" {
				name += " (" + f.flag + ")"
			}
			return fmt.Errorf("server: %s %v: must be 0 (%s) or more", name, f.v, f.zero)
		}
	}
	return cfg.Limits.Validate()
}

// New validates cfg and returns a Server. It does not modify cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Verifier == nil || cfg.BackendKeys == nil {
		return nil, errors.New("server: Store, Verifier and BackendKeys are required")
	}
	cfg.SystemPrefixes = slices.Clone(cfg.SystemPrefixes)
	cfg.Shared = slices.Clone(cfg.Shared)
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if cfg.MaxRequestBytes == 0 {
		cfg.MaxRequestBytes = value.DefaultMaxRequestBytes
	}
	if cfg.BodyTimeout == 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections()
	}
	if cfg.ConnectionWait == 0 {
		cfg.ConnectionWait = DefaultConnectionWait
	}
	if cfg.RateLimit == 0 {
		cfg.RateLimit = DefaultRateLimit
	}
	if cfg.RateBurst == 0 {
		cfg.RateBurst = max(1, int(cfg.RateLimit))
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.CompactEvery == 0 {
		cfg.CompactEvery = min(max(cfg.Retention/100, time.Second), time.Hour)
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.WatchBuffer == 0 {
		cfg.WatchBuffer = DefaultWatchBuffer
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.MaxWatchesPerUser == 0 {
		cfg.MaxWatchesPerUser = DefaultMaxWatchesPerUser
	}
	if cfg.MaxWatchesPerDevice == 0 {
		cfg.MaxWatchesPerDevice = DefaultMaxWatchesPerDevice
	}
	if cfg.MaxFeedWatches == 0 {
		cfg.MaxFeedWatches = DefaultMaxFeedWatches
	}
	if cfg.StreamWriteTimeout == 0 {
		cfg.StreamWriteTimeout = DefaultStreamWriteTimeout
	}
	if cfg.StreamPageBytes == 0 {
		cfg.StreamPageBytes = DefaultStreamPageBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TLS != nil {
		c, err := serverTLSConfig(cfg.TLS)
		if err != nil {
			return nil, err
		}
		cfg.TLS = c
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, shared: make(map[string]SharedPartition), hub: newHub(), drain: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, sp := range cfg.Shared {
		if err := value.ValidatePartitionName(sp.Name); err != nil {
			return nil, fmt.Errorf("shared partition %q: %w", sp.Name, err)
		}
		if _, dup := s.shared[sp.Name]; dup {
			return nil, fmt.Errorf("shared partition %q is configured twice", sp.Name)
		}
		s.shared[sp.Name] = sp
	}
	if s.notifier, _ = cfg.Store.(store.Notifier); s.notifier != nil {
		s.remote = newRemoteCommits(s.notifier, s.log, s.hub.publishAnnounced)
	}
	s.metrics = newMetrics(cfg.Registry, cfg.Store)
	s.metrics.registerConnections(cfg.Registry, func() *limitListener { return s.conns.Load() })
	if s.remote != nil {
		s.metrics.registerListening(cfg.Registry, s.remote.listening)
	}
	eng, err := engine.New(engine.Config{
		Store:          cfg.Store,
		SystemPrefixes: cfg.SystemPrefixes,
		Limits:         cfg.Limits,
		Now:            cfg.Now,
		OnCommit:       s.committed,
	})
	if err != nil {
		return nil, err
	}
	s.eng = eng
	eng.SetRules(cfg.Rules)
	if cfg.RateLimit > 0 {
		s.limiter = newRateLimiter(cfg.RateLimit, cfg.RateBurst, cfg.Now)
	}
	s.handler = withCORS(s.routes(), cfg.CORSOrigins)
	return s, nil
}

// recovered answers a call whose handler panicked: the panic is a bug of
// the server's, logged with its stack at error level (net/http's own log of
// a recovered panic is at debug level, with its other noise), and the
// caller gets internal. The handler's deferred calls have given back what
// it held.
func (s *Server) recovered(_ context.Context, spec connect.Spec, _ http.Header, p any) error {
	s.log.Error("a call's handler panicked", "procedure", spec.Procedure, "panic", p, "stack", string(debug.Stack()))
	return connect.NewError(connect.CodeInternal, errors.New("the server failed to answer this call; it logged why"))
}

func (s *Server) routes() http.Handler {
	opts := []connect.HandlerOption{
		connect.WithInterceptors(s.metrics.interceptor()),
		connect.WithReadMaxBytes(s.cfg.MaxRequestBytes),
		s.gzipWithLimit(),
		// Compressing small answers costs more CPU than the bytes it saves.
		connect.WithCompressMinBytes(1024),
		connect.WithRecover(s.recovered),
	}
	opts = append(opts, jsonCodecs()...)
	mux := http.NewServeMux()
	procedures := rpcProcedures()
	handle := func(path string, h http.Handler) { mux.Handle(path, s.metrics.countRefused(procedures, h)) }
	// Once the store has failed, every call of the services is refused.
	svcOpts := append(slices.Clone(opts), connect.WithInterceptors(failedStore{s}, badRequestStream{}))
	path, h := dalvv1connect.NewClientServiceHandler(&clientService{s: s}, svcOpts...)
	handle(path, s.authenticate(deviceToken, h))
	path, h = dalvv1connect.NewBackendServiceHandler(&backendService{s: s}, svcOpts...)
	handle(path, s.authenticate(backendKey, h))
	// The standard gRPC health check, for load balancers, open to all; it
	// is also the no-op call `dalv bench` measures the transport's floor
	// with.
	s.health = grpchealth.NewStaticChecker(dalvv1connect.ClientServiceName, dalvv1connect.BackendServiceName)
	handle(grpchealth.NewHandler(healthChecker{s: s, static: s.health}, opts...))
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	// "GET /{$}" is the root alone: every other unknown path stays 404.
	page := indexPage()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	return withRequestState(s.limitBodyTime(s.limitRequestSize(mux)))
}

// indexPage is what GET / answers: what this server is and where its
// endpoints are, for a person who opens its address in a browser or with
// curl. The procedures come from the protocol's descriptors.
func indexPage() []byte {
	var b strings.Builder
	b.WriteString(`<!doctype html>
<html><head><meta charset="utf-8"><title>DalvDB</title></head>
<body>
<h1>DalvDB</h1>
<p>A DalvDB server: the ConnectRPC protocol dalv.v1 (Connect, gRPC and
gRPC-Web; HTTP/1.1 and HTTP/2), one POST per procedure. Devices send a JWT,
backends an API key, as Authorization: Bearer.</p>
<ul>
`)
	services := dalvv1.File_dalv_v1_dalv_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		var methods []string
		for j := range sd.Methods().Len() {
			methods = append(methods, string(sd.Methods().Get(j).Name()))
		}
		fmt.Fprintf(&b, "<li><code>/%s/</code>: %s</li>\n", sd.FullName(), strings.Join(methods, ", "))
	}
	b.WriteString(`<li><code>/grpc.health.v1.Health/</code>: Check, Watch</li>
<li><a href="/healthz">/healthz</a>: ok, or 503 while draining or while the store reports a failure</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
</body></html>
`)
	return []byte(b.String())
}

// rpcProcedures are the paths of the procedures the server serves: the
// values dalv_requests_total's procedure label may take.
func rpcProcedures() map[string]bool {
	procs := make(map[string]bool)
	for _, m := range []string{"Check", "Watch"} {
		procs["/"+grpchealth.HealthV1ServiceName+"/"+m] = true
	}
	services := dalvv1.File_dalv_v1_dalv_proto.Services()
	for i := range services.Len() {
		sd := services.Get(i)
		for j := range sd.Methods().Len() {
			procs["/"+string(sd.FullName())+"/"+string(sd.Methods().Get(j).Name())] = true
		}
	}
	return procs
}

// Handler returns the server's HTTP handler: both services, /healthz and
// /metrics.
func (s *Server) Handler() http.Handler { return s.handler }

// Engine returns the engine the server runs.
func (s *Server) Engine() *engine.Engine { return s.eng }

// Serve serves on ln until ctx is done, then stops taking connections,
// drains in-flight requests (up to DrainTimeout) and returns. It keeps at
// most MaxConnections of ln's connections open, and runs the retention
// compaction in the background meanwhile. The store stays open. With
// Config.TLS, ln is a plain TCP listener: Serve runs TLS over the
// connections it admits, so the cap counts TCP connections, and one whose
// handshake stalls is closed after ReadHeaderTimeout, or sooner when the cap
// needs its slot (it counts as having sent nothing).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	lim := newLimitListener(ln, s.cfg.MaxConnections, s.cfg.ConnectionWait)
	s.conns.Store(lim)
	if n, ok := fileLimit(); ok && s.cfg.MaxConnections > n {
		s.log.Warn("the connection cap is above the open-file limit: connections can take the descriptors the store needs",
			"max_connections", s.cfg.MaxConnections, "file_limit", n)
	} else {
		s.log.Info("connections capped", "max_connections", s.cfg.MaxConnections, "file_limit", n, "body_timeout", s.cfg.BodyTimeout)
	}
	hs := &http.Server{
		Handler: s.handler,
		// A request's body has its own deadline (BodyTimeout, see
		// limitBodyTime); a connection idle between requests is closed
		// after IdleTimeout, or sooner when the connection cap needs room.
		// ReadHeaderTimeout also bounds a TLS handshake.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ConnState:         lim.connState,
		Protocols:         new(http.Protocols),
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	hs.Protocols.SetHTTP1(true)
	serve := func() error { return hs.Serve(lim) }
	if s.cfg.TLS != nil {
		hs.Protocols.SetHTTP2(true)
		hs.TLSConfig = s.cfg.TLS // ServeTLS copies it and sets NextProtos to h2 and http/1.1
		serve = func() error { return hs.ServeTLS(lim, "", "") }
	} else {
		hs.Protocols.SetUnencryptedHTTP2(true)
	}

	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	compacted := make(chan struct{})
	go func() {
		defer close(compacted)
		s.compactLoop(bg)
	}()
	if s.remote != nil {
		defer s.remote.stop()
	}

	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err := <-errc:
		stopBG()
		<-compacted
		return err
	case <-ctx.Done():
	}
	s.draining.Store(true)
	close(s.drain) // streams end with unavailable, so Shutdown need not wait for them
	s.health.SetStatus("", grpchealth.StatusNotServing)
	s.log.Info("draining", "timeout", s.cfg.DrainTimeout)
	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	err := hs.Shutdown(dctx)
	stopBG()
	<-compacted
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}

func (s *Server) compactLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CompactEvery)
	defer t.Stop()
	for {
		st, err := s.eng.Compact(ctx, s.cfg.Retention)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Error("compaction failed", "err", err)
		case st.Tombstones > 0 || st.FeedRecords > 0:
			s.log.Info("compacted", "tombstones", st.Tombstones, "feed_records", st.FeedRecords)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) committed(ci engine.CommitInfo) {
	source := "backend"
	if ci.Device != "" {
		source = "device"
	}
	s.metrics.commits.WithLabelValues(source).Inc()
	s.hub.publish(ci.Partition, &commitEvent{version: ci.Version, changes: ci.Changes, erase: ci.Erase})
}
