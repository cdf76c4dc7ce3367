// Package server serves DalvDB's dalv.v1 protocol over ConnectRPC (Connect,
// gRPC and gRPC-Web, HTTP/1.1 and h2c on one port), plus GET /healthz and
// GET /metrics. It authenticates devices by JWT and backends by API key,
// enforces limits, runs package engine's rules over a store, and is the only
// place that speaks Connect codes (see errors.go). A Server can be started in
// a test process as well as by `dalv serve`.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	"github.com/dalvdb/dalv/store"
)

// Config configures a Server. Zero fields take the documented defaults.
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
	Limits engine.Limits
	// MaxRequestBytes bounds a request body (default 8 MiB).
	MaxRequestBytes int
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
	// DrainTimeout bounds the wait for in-flight requests on shutdown
	// (default 10s).
	DrainTimeout time.Duration
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
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
	DefaultMaxRequestBytes = 8 << 20
	DefaultRateLimit       = 1000
	DefaultRetention       = 7 * 24 * time.Hour
	DefaultDrainTimeout    = 10 * time.Second
	DefaultWatchBuffer     = 64
	DefaultHeartbeat       = 15 * time.Second
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
	notifier store.Notifier // when the store is shared with other processes
	drain    chan struct{}  // closed when shutdown begins: streams end
	draining atomic.Bool
}

// New validates cfg and returns a Server. It does not modify cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Verifier == nil || cfg.BackendKeys == nil {
		return nil, errors.New("server: Store, Verifier and BackendKeys are required")
	}
	cfg.SystemPrefixes = slices.Clone(cfg.SystemPrefixes)
	cfg.Shared = slices.Clone(cfg.Shared)
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.RateLimit == 0 {
		cfg.RateLimit = DefaultRateLimit
	}
	if cfg.RateBurst <= 0 {
		cfg.RateBurst = max(1, int(cfg.RateLimit))
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.CompactEvery <= 0 {
		cfg.CompactEvery = min(max(cfg.Retention/100, time.Second), time.Hour)
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.WatchBuffer <= 0 {
		cfg.WatchBuffer = DefaultWatchBuffer
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, shared: make(map[string]SharedPartition), hub: newHub(), drain: make(chan struct{})}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, sp := range cfg.Shared {
		if err := engine.ValidatePartitionName(sp.Name); err != nil {
			return nil, fmt.Errorf("shared partition %q: %w", sp.Name, err)
		}
		if _, dup := s.shared[sp.Name]; dup {
			return nil, fmt.Errorf("shared partition %q is configured twice", sp.Name)
		}
		s.shared[sp.Name] = sp
	}
	s.notifier, _ = cfg.Store.(store.Notifier)
	s.metrics = newMetrics(cfg.Registry, cfg.Store)
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
	if cfg.RateLimit > 0 {
		s.limiter = newRateLimiter(cfg.RateLimit, cfg.RateBurst)
	}
	s.handler = withCORS(s.routes(), cfg.CORSOrigins)
	return s, nil
}

func (s *Server) routes() http.Handler {
	opts := []connect.HandlerOption{
		connect.WithInterceptors(s.metrics.interceptor()),
		connect.WithReadMaxBytes(s.cfg.MaxRequestBytes),
		s.gzipWithLimit(),
		// Compressing small answers costs more CPU than the bytes it saves.
		connect.WithCompressMinBytes(1024),
	}
	mux := http.NewServeMux()
	procedures := rpcProcedures()
	handle := func(path string, h http.Handler) { mux.Handle(path, s.metrics.countRefused(procedures, h)) }
	handle(dalvv1connect.NewClientServiceHandler(&clientService{s: s}, opts...))
	handle(dalvv1connect.NewBackendServiceHandler(&backendService{s: s}, opts...))
	// The standard gRPC health check, for load balancers; it is also the
	// no-op call `dalv bench` measures the transport's floor with.
	s.health = grpchealth.NewStaticChecker(dalvv1connect.ClientServiceName, dalvv1connect.BackendServiceName)
	handle(grpchealth.NewHandler(s.health, opts...))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	return s.limitRequestSize(mux)
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
// drains in-flight requests (up to DrainTimeout) and returns. It runs the
// retention compaction in the background meanwhile. The store stays open.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		Protocols:         new(http.Protocols),
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)

	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	compacted := make(chan struct{})
	go func() {
		defer close(compacted)
		s.compactLoop(bg)
	}()
	if s.notifier != nil {
		go func() {
			err := s.notifier.Notifications(bg, func(p store.Partition, version uint64) {
				s.hub.publish(p, &commitEvent{version: version, remote: true})
			})
			if err != nil && bg.Err() == nil {
				s.log.Error("commit notifications stopped", "err", err)
			}
		}()
	}

	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
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
