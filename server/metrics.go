package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/dalvdb/dalv/store"
)

// metrics are the server's Prometheus series.
type metrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	commits   *prometheus.CounterVec
	conflicts prometheus.Counter
	// watchers counts open device watches; slowWatchers those cut off.
	watchers     prometheus.Gauge
	slowWatchers prometheus.Counter
	feedReaders  prometheus.Gauge
	// streamTimeouts counts streams ended because a message was not
	// written within the write timeout, by stream: device or feed.
	streamTimeouts *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry, st store.Store) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dalv_requests_total",
			Help: "RPCs handled, by procedure and Connect code.",
		}, []string{"procedure", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dalv_request_duration_seconds",
			Help:    "RPC latency by procedure.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .015, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"procedure"}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dalv_commits_total",
			Help: "Durable commits, by source (device or backend).",
		}, []string{"source"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dalv_sync_conflicts_total",
			Help: "Syncs answered with SYNC_STATUS_CONFLICT.",
		}),
	}
	m.watchers = prometheus.NewGauge(prometheus.GaugeOpts{Name: "dalv_device_watches", Help: "Open device watches."})
	m.slowWatchers = prometheus.NewCounter(prometheus.CounterOpts{Name: "dalv_slow_watchers_total", Help: "Watches ended because they fell too far behind."})
	m.feedReaders = prometheus.NewGauge(prometheus.GaugeOpts{Name: "dalv_feed_watches", Help: "Open backend change-feed watches."})
	m.streamTimeouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dalv_stream_write_timeouts_total",
		Help: "Streams ended because a message waited longer than the write timeout to be written, by stream (device, feed or export).",
	}, []string{"stream"})
	m.streamTimeouts.WithLabelValues("device")
	m.streamTimeouts.WithLabelValues("feed")
	m.streamTimeouts.WithLabelValues("export")
	reg.MustRegister(m.requests, m.latency, m.commits, m.conflicts, m.watchers, m.slowWatchers, m.feedReaders, m.streamTimeouts,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dalv_store_bytes",
			Help: "Approximate size of the store on disk.",
		}, func() float64 { return float64(st.DiskBytes()) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// A store with metrics of its own (the PostgreSQL store's feed stall)
	// adds them.
	if c, ok := st.(prometheus.Collector); ok {
		reg.MustRegister(c)
	}
	return m
}

// registerConnections adds the series of the connection cap: the open
// connections and those of them idle, the connections refused for want of
// room and the idle ones closed to make room. ln returns the listener of
// the running Serve, or nil.
func (m *metrics) registerConnections(reg *prometheus.Registry, ln func() *limitListener) {
	stat := func(pick func(open, idle int, refused, evicted uint64) float64) func() float64 {
		return func() float64 {
			l := ln()
			if l == nil {
				return 0
			}
			return pick(l.stats())
		}
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dalv_connections", Help: "Open client connections (--max-connections caps them)."},
			stat(func(open, _ int, _, _ uint64) float64 { return float64(open) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dalv_connections_idle", Help: "Open client connections idle between requests."},
			stat(func(_, idle int, _, _ uint64) float64 { return float64(idle) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "dalv_connections_refused_total", Help: "Connections closed unanswered because --max-connections were open and none freed in time."},
			stat(func(_, _ int, refused, _ uint64) float64 { return float64(refused) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "dalv_connections_idle_closed_total", Help: "Idle connections closed to make room under --max-connections."},
			stat(func(_, _ int, _, evicted uint64) float64 { return float64(evicted) })),
	)
}

// interceptor counts and times every RPC; for streams, the whole stream.
func (m *metrics) interceptor() connect.Interceptor { return metricsInterceptor{m} }

type metricsInterceptor struct{ m *metrics }

func (i metricsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		resp, err := next(ctx, req)
		markObserved(ctx)
		i.m.observe(req.Spec().Procedure, start, err)
		return resp, err
	}
}

func (i metricsInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i metricsInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		markObserved(ctx)
		i.m.observe(conn.Spec().Procedure, start, err)
		return err
	}
}

// observe counts and times one RPC with the code err carries.
func (m *metrics) observe(procedure string, start time.Time, err error) {
	code := "ok"
	if err != nil {
		code = connect.CodeOf(err).String()
		var ce *connect.Error
		if !errors.As(err, &ce) {
			code = connect.CodeUnknown.String()
		}
	}
	m.requests.WithLabelValues(procedure, code).Inc()
	m.latency.WithLabelValues(procedure).Observe(time.Since(start).Seconds())
}

// Connect answers some requests itself, before any interceptor runs: a body
// that does not decode, a content type or protocol it does not speak, a
// procedure the service does not have. countRefused counts those, with
// the code the client reads from the answer, so dalv_requests_total counts
// every request to the RPC handlers once.
func (m *metrics) countRefused(procedures map[string]bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		st, r := requestStateOf(r)
		rec := &st.rec
		rec.ResponseWriter = w
		next.ServeHTTP(rec, r)
		if rec.observed.Load() {
			return
		}
		procedure := r.URL.Path
		if !procedures[procedure] {
			procedure = "unknown" // a path the client chose: not a label value
		}
		m.requests.WithLabelValues(procedure, rec.code()).Inc()
		m.latency.WithLabelValues(procedure).Observe(time.Since(start).Seconds())
	})
}

// markObserved tells the request's refusalRecorder, if any, that the
// metrics interceptor counted the request.
func markObserved(ctx context.Context) {
	if st := stateOf(ctx); st != nil {
		st.rec.observed.Store(true)
	}
}

// refusalRecorder keeps what a refusal's code can be read from: the HTTP
// status, and the start of an error's body.
type refusalRecorder struct {
	http.ResponseWriter
	observed atomic.Bool
	status   int
	body     []byte // the first bytes of a body under an error status
}

func (r *refusalRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *refusalRecorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if r.status != http.StatusOK && !r.observed.Load() && len(r.body) < 1024 {
		r.body = append(r.body, p[:min(len(p), 1024-len(r.body))]...)
	}
	return r.ResponseWriter.Write(p)
}

// Flush passes a flush on: Connect flushes streams.
func (r *refusalRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (r *refusalRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// code is the Connect code of a refused request as its client reads it:
// gRPC and gRPC-Web carry it in grpc-status (in the headers: a refusal
// sends no message), Connect in its error body, and an answer with neither
// by its HTTP status, as Connect's protocol maps it.
func (r *refusalRecorder) code() string {
	if v := r.Header().Get("Grpc-Status"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > int(connect.CodeUnauthenticated) {
			return connect.CodeUnknown.String()
		}
		if n == 0 {
			return "ok"
		}
		return connect.Code(n).String()
	}
	if r.status == http.StatusOK || r.status == 0 {
		return "ok"
	}
	var body struct {
		Code string `json:"code"`
	}
	var c connect.Code
	if json.Unmarshal(r.body, &body) == nil && c.UnmarshalText([]byte(body.Code)) == nil {
		return c.String()
	}
	switch r.status {
	case http.StatusBadRequest:
		return connect.CodeInternal.String()
	case http.StatusUnauthorized:
		return connect.CodeUnauthenticated.String()
	case http.StatusForbidden:
		return connect.CodePermissionDenied.String()
	case http.StatusNotFound:
		return connect.CodeUnimplemented.String()
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return connect.CodeUnavailable.String()
	}
	return connect.CodeUnknown.String()
}

// registerListening adds whether this process listens for other processes'
// commits (1) or not (0), for servers on a store shared with others.
func (m *metrics) registerListening(reg *prometheus.Registry, listening func() bool) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dalv_remote_commits_listening",
		Help: "1 while this node listens for other nodes' commits (while it has a device or feed watch open, and a while after), else 0.",
	}, func() float64 {
		if listening() {
			return 1
		}
		return 0
	}))
}
