package server

import (
	"context"
	"errors"
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
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
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
	reg.MustRegister(m.requests, m.latency, m.commits, m.conflicts, m.watchers, m.slowWatchers, m.feedReaders,
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

// interceptor counts and times every RPC; for streams, the whole stream.
func (m *metrics) interceptor() connect.Interceptor { return metricsInterceptor{m} }

type metricsInterceptor struct{ m *metrics }

func (i metricsInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		resp, err := next(ctx, req)
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
		i.m.observe(conn.Spec().Procedure, start, err)
		return err
	}
}

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
