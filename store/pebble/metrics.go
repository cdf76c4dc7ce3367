package pebble

import (
	"slices"
	"sync"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The store's own metrics, read from Pebble at each scrape: what tells a
// sync's tail apart from the disk's (the WAL fsyncs every commit waits
// for) and from Pebble holding writes back (write stalls), and the
// background work that shares the CPU with requests.
var (
	descFsync = prometheus.NewDesc("dalv_pebble_wal_fsync_seconds",
		"Time each fsync of the write-ahead log took; every acknowledged commit waited for one, shared with the commits grouped into it.",
		nil, nil)
	descStalls = prometheus.NewDesc("dalv_pebble_write_stalls_total",
		"Times Pebble held all writes back because flushes or compactions fell behind.",
		nil, nil)
	descStallSeconds = prometheus.NewDesc("dalv_pebble_write_stall_seconds_total",
		"Time all writes were held back by write stalls, an open stall included.",
		nil, nil)
	descFlushes = prometheus.NewDesc("dalv_pebble_flushes_total",
		"Memtables written out to sstables.",
		nil, nil)
	descCompactions = prometheus.NewDesc("dalv_pebble_compactions_total",
		"Compactions finished.",
		nil, nil)
	descCompactionSeconds = prometheus.NewDesc("dalv_pebble_compaction_seconds_total",
		"Time spent in compactions, summed over concurrent ones.",
		nil, nil)
	descCompactionDebt = prometheus.NewDesc("dalv_pebble_compaction_debt_bytes",
		"Bytes Pebble estimates it must compact to bring the LSM back into shape.",
		nil, nil)
	descReadAmp = prometheus.NewDesc("dalv_pebble_read_amplification",
		"Sstables a point read may have to consult (L0 sublevels plus non-empty levels).",
		nil, nil)
	descCacheHits = prometheus.NewDesc("dalv_pebble_block_cache_hits_total",
		"Block cache lookups that found their block.",
		nil, nil)
	descCacheMisses = prometheus.NewDesc("dalv_pebble_block_cache_misses_total",
		"Block cache lookups that read their block from disk.",
		nil, nil)
)

// fsyncBounds are the upper bounds, in nanoseconds, of the exported fsync
// histogram's buckets: for each of about a dozen round figures from 0.2 ms
// to 10 s, the first of Pebble's own bounds (pebble.FsyncLatencyBuckets)
// at least as large. Exported at Pebble's bounds, every count is exact.
var fsyncBounds = func() []float64 {
	var bounds []float64
	for _, want := range []float64{0.2e6, 0.5e6, 1e6, 2e6, 3e6, 4e6, 5e6, 10e6, 25e6, 50e6, 100e6, 250e6, 500e6, 1e9, 2.5e9, 10e9} {
		i := slices.IndexFunc(pebbledb.FsyncLatencyBuckets, func(b float64) bool { return b >= want*(1-1e-9) })
		if i >= 0 && (len(bounds) == 0 || pebbledb.FsyncLatencyBuckets[i] > bounds[len(bounds)-1]) {
			bounds = append(bounds, pebbledb.FsyncLatencyBuckets[i])
		}
	}
	return bounds
}()

// writeStalls counts Pebble's write stalls, from its event listener.
type writeStalls struct {
	clock func() time.Time // nil means time.Now
	mu    sync.Mutex
	count uint64
	total time.Duration
	began time.Time // zero when no stall is open
}

func (w *writeStalls) begin(pebbledb.WriteStallBeginInfo) {
	w.mu.Lock()
	w.count++
	w.began = w.now()
	w.mu.Unlock()
}

func (w *writeStalls) end() {
	w.mu.Lock()
	if !w.began.IsZero() {
		w.total += w.now().Sub(w.began)
		w.began = time.Time{}
	}
	w.mu.Unlock()
}

func (w *writeStalls) now() time.Time {
	if w.clock != nil {
		return w.clock()
	}
	return time.Now()
}

// read returns the stalls so far and their time, an open one's included.
func (w *writeStalls) read() (uint64, time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	total := w.total
	if !w.began.IsZero() {
		total += w.now().Sub(w.began)
	}
	return w.count, total
}

// Describe implements [prometheus.Collector]: the server registers the
// store's metrics when its store is one.
func (s *Store) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFsync, descStalls, descStallSeconds, descFlushes,
		descCompactions, descCompactionSeconds, descCompactionDebt, descReadAmp, descCacheHits, descCacheMisses} {
		ch <- d
	}
}

// Collect implements [prometheus.Collector]. A closed store reports
// nothing.
func (s *Store) Collect(ch chan<- prometheus.Metric) {
	if s.gate.Enter() != nil {
		return
	}
	defer s.gate.Exit()
	m := s.db.Metrics()
	if m.LogWriter.FsyncLatency != nil {
		if h, err := fsyncHistogram(m.LogWriter.FsyncLatency); err == nil {
			ch <- h
		}
	}
	stalls, stalled := s.stalls.read()
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter(descStalls, float64(stalls))
	counter(descStallSeconds, stalled.Seconds())
	counter(descFlushes, float64(m.Flush.Count))
	counter(descCompactions, float64(m.Compact.Count))
	counter(descCompactionSeconds, m.Compact.Duration.Seconds())
	gauge(descCompactionDebt, float64(m.Compact.EstimatedDebt))
	gauge(descReadAmp, float64(m.ReadAmp()))
	counter(descCacheHits, float64(m.BlockCache.Hits))
	counter(descCacheMisses, float64(m.BlockCache.Misses))
}

// fsyncHistogram exports Pebble's fsync latency histogram, whose values
// are nanoseconds in about a hundred buckets, in seconds and in the
// buckets of fsyncBounds.
func fsyncHistogram(h prometheus.Histogram) (prometheus.Metric, error) {
	var pm dto.Metric
	if err := h.Write(&pm); err != nil {
		return nil, err
	}
	src := pm.GetHistogram()
	buckets := make(map[float64]uint64, len(fsyncBounds))
	for _, b := range src.GetBucket() {
		if slices.Contains(fsyncBounds, b.GetUpperBound()) {
			buckets[b.GetUpperBound()/1e9] = b.GetCumulativeCount()
		}
	}
	return prometheus.NewConstHistogram(descFsync, src.GetSampleCount(), src.GetSampleSum()/1e9, buckets)
}
