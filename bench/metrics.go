package bench

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
)

// scrapeMetrics reads the server's /metrics at url.
func (b *bencher) scrapeMetrics(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	return scrape(ctx, b.clients.tr, url)
}

// scrape reads /metrics of the server at url through rt.
func scrape(ctx context.Context, rt http.RoundTripper, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: GET /metrics: %w", ErrCallFailed, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: GET /metrics: %s", ErrCallFailed, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%w: /metrics: %w", ErrWrongAnswer, err)
	}
	return fams, nil
}

// value is the value of the first series of the family name, whatever its
// type, and whether there is one.
func value(fams map[string]*dto.MetricFamily, name string) (float64, bool) {
	f := fams[name]
	if f == nil || len(f.GetMetric()) == 0 {
		return 0, false
	}
	m := f.GetMetric()[0]
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue(), true
	case m.Counter != nil:
		return m.GetCounter().GetValue(), true
	case m.Untyped != nil:
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}

// histSample is a histogram's cumulative buckets at one scrape.
type histSample struct {
	bounds []float64 // the buckets' upper bounds, rising
	counts []uint64  // cumulative, per bound
	total  uint64    // the +Inf bucket
}

// histOf reads the histogram h, or reports that there is none.
func histOf(h *dto.Histogram) (histSample, bool) {
	if h == nil {
		return histSample{}, false
	}
	s := histSample{total: h.GetSampleCount()}
	for _, bk := range h.GetBucket() {
		s.bounds = append(s.bounds, bk.GetUpperBound())
		s.counts = append(s.counts, bk.GetCumulativeCount())
	}
	return s, true
}

// count is the number of observations between old and s.
func (s histSample) count(old histSample) uint64 { return s.total - old.total }

// since is the observations between old and s, as a sample of their own;
// false when the two have other buckets.
func (s histSample) since(old histSample) (histSample, bool) {
	if !slices.Equal(s.bounds, old.bounds) {
		return histSample{}, false
	}
	d := histSample{bounds: s.bounds, counts: make([]uint64, len(s.counts)), total: s.total - old.total}
	for i := range s.counts {
		d.counts[i] = s.counts[i] - old.counts[i]
	}
	return d, true
}

// plus is the observations of s and o together (o alone when s is the zero
// sample); false when the two have other buckets.
func (s histSample) plus(o histSample) (histSample, bool) {
	if s.bounds == nil {
		return o, true
	}
	if !slices.Equal(s.bounds, o.bounds) {
		return histSample{}, false
	}
	d := histSample{bounds: s.bounds, counts: make([]uint64, len(s.counts)), total: s.total + o.total}
	for i := range s.counts {
		d.counts[i] = s.counts[i] + o.counts[i]
	}
	return d, true
}

// quantile estimates the q-quantile of the observations between old and
// s (all of s's when old is the zero sample), as Prometheus's
// histogram_quantile does: by linear interpolation within the bucket it
// falls in. It is NaN without observations or when the two have other
// buckets, and the highest bound when the quantile lies beyond it.
func (s histSample) quantile(old histSample, q float64) float64 {
	w := s
	if old.bounds != nil {
		var ok bool
		if w, ok = s.since(old); !ok {
			return math.NaN()
		}
	}
	if w.total == 0 || len(w.bounds) == 0 {
		return math.NaN()
	}
	rank := q * float64(w.total)
	lower, below := 0.0, uint64(0)
	for i, bound := range w.bounds {
		c := w.counts[i]
		if float64(c) >= rank {
			if c == below {
				return bound
			}
			return lower + (bound-lower)*(rank-float64(below))/float64(c-below)
		}
		lower, below = bound, c
	}
	return w.bounds[len(w.bounds)-1]
}

// serverSample is what the server's metrics say at one moment of the time
// its syncs take in its handlers, of what it has allocated on the Go heap
// and, on the embedded store, of the WAL fsyncs its syncs wait for and of
// Pebble's write stalls.
type serverSample struct {
	syncs  histSample // dalv_request_duration_seconds of Sync
	fsyncs histSample // dalv_pebble_wal_fsync_seconds
	stalls float64
	// allocBytes and allocObjects count every allocation since the
	// server started (go_memstats_alloc_bytes_total, go_memstats_mallocs_total).
	allocBytes, allocObjects float64
	// hasSyncs, hasWAL and hasAllocs say which of the above the server
	// published.
	hasSyncs, hasWAL, hasAllocs bool
}

// serverSampleOf reads a serverSample from a scrape.
func serverSampleOf(fams map[string]*dto.MetricFamily) serverSample {
	var s serverSample
	if f := fams["dalv_request_duration_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "procedure" && l.GetValue() == dalvv1connect.ClientServiceSyncProcedure {
					s.syncs, s.hasSyncs = histOf(m.GetHistogram())
				}
			}
		}
	}
	if f := fams["dalv_pebble_wal_fsync_seconds"]; f != nil && len(f.GetMetric()) > 0 {
		s.fsyncs, s.hasWAL = histOf(f.GetMetric()[0].GetHistogram())
		s.stalls, _ = value(fams, "dalv_pebble_write_stalls_total")
	}
	var okBytes, okObjects bool
	s.allocBytes, okBytes = value(fams, "go_memstats_alloc_bytes_total")
	s.allocObjects, okObjects = value(fams, "go_memstats_mallocs_total")
	s.hasAllocs = okBytes && okObjects
	return s
}
