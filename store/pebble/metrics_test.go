package pebble

import (
	"fmt"
	"slices"
	"testing"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dalvdb/dalv/store"
)

// TestMetrics gathers the store's metrics after some commits: every
// commit's fsync is in the histogram, whose buckets are cumulative and
// end with all of them, and a closed store reports nothing.
func TestMetrics(t *testing.T) {
	t.Parallel()
	s := mustOpen(t, t.TempDir(), Options{})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s)
	const commits = 20
	for i := range commits {
		mustCommit(t, s, store.Partition{Name: "alice"}, store.Commit{Entries: []store.Entry{{Key: fmt.Sprint("k", i), Value: []byte("1")}}})
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := make(map[string]*dto.MetricFamily)
	for _, f := range families {
		byName[f.GetName()] = f
	}
	for _, name := range []string{"dalv_pebble_write_stalls_total", "dalv_pebble_write_stall_seconds_total", "dalv_pebble_flushes_total",
		"dalv_pebble_compactions_total", "dalv_pebble_compaction_seconds_total", "dalv_pebble_compaction_debt_bytes",
		"dalv_pebble_read_amplification", "dalv_pebble_block_cache_hits_total", "dalv_pebble_block_cache_misses_total"} {
		if byName[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	f := byName["dalv_pebble_wal_fsync_seconds"]
	if f == nil {
		t.Fatal("no dalv_pebble_wal_fsync_seconds")
	}
	h := f.GetMetric()[0].GetHistogram()
	// Opening the store syncs its WAL too, so there may be more fsyncs
	// than commits, never fewer: every commit waits for one of its own.
	if h.GetSampleCount() < commits || h.GetSampleSum() <= 0 || h.GetSampleSum() > float64(h.GetSampleCount())*10 {
		t.Errorf("fsyncs: %d taking %gs, want at least %d taking some time, each under 10 s", h.GetSampleCount(), h.GetSampleSum(), commits)
	}
	buckets := h.GetBucket()
	if len(buckets) != len(fsyncBounds) {
		t.Fatalf("%d buckets, want %d", len(buckets), len(fsyncBounds))
	}
	for i, b := range buckets {
		if i > 0 && (b.GetUpperBound() <= buckets[i-1].GetUpperBound() || b.GetCumulativeCount() < buckets[i-1].GetCumulativeCount()) {
			t.Errorf("bucket %d (le %g, %d) does not follow (le %g, %d)", i, b.GetUpperBound(), b.GetCumulativeCount(), buckets[i-1].GetUpperBound(), buckets[i-1].GetCumulativeCount())
		}
	}
	if last := buckets[len(buckets)-1]; last.GetUpperBound() < 10*(1-1e-9) || last.GetCumulativeCount() != h.GetSampleCount() {
		t.Errorf("last bucket le %g holds %d of %d fsyncs, want le 10 s holding all", last.GetUpperBound(), last.GetCumulativeCount(), h.GetSampleCount())
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if families, err = reg.Gather(); err != nil || len(families) != 0 {
		t.Errorf("a closed store reported %d families (%v), want none", len(families), err)
	}
}

// TestFsyncBounds checks that the fsync histogram's bounds are Pebble's
// own, rising, from under a millisecond to 10 s.
func TestFsyncBounds(t *testing.T) {
	if len(fsyncBounds) < 10 || fsyncBounds[0] > 1e6 || fsyncBounds[len(fsyncBounds)-1] < 10e9*(1-1e-9) || !slices.IsSorted(fsyncBounds) {
		t.Fatalf("bounds %v", fsyncBounds)
	}
	for _, b := range fsyncBounds {
		if !slices.Contains(pebbledb.FsyncLatencyBuckets, b) {
			t.Errorf("bound %g ns is not one of Pebble's", b)
		}
	}
}

// TestWriteStalls counts stalls and their time, an open one's included.
func TestWriteStalls(t *testing.T) {
	now := time.Unix(1000, 0)
	w := writeStalls{clock: func() time.Time { return now }}
	w.end() // an end without a begin counts nothing
	if n, d := w.read(); n != 0 || d != 0 {
		t.Fatalf("before any stall: %d, %v", n, d)
	}
	w.begin(pebbledb.WriteStallBeginInfo{Reason: "memtable count limit reached"})
	now = now.Add(time.Second)
	if n, d := w.read(); n != 1 || d != time.Second {
		t.Fatalf("open stall: %d, %v; want 1 of 1s so far", n, d)
	}
	now = now.Add(time.Second)
	w.end()
	now = now.Add(time.Hour)
	if n, d := w.read(); n != 1 || d != 2*time.Second {
		t.Fatalf("ended stall: %d, %v; want 1 of 2s", n, d)
	}
	w.begin(pebbledb.WriteStallBeginInfo{Reason: "L0 file count limit exceeded"})
	now = now.Add(time.Second)
	if n, d := w.read(); n != 2 || d != 3*time.Second {
		t.Fatalf("second stall open: %d, %v; want 2 of 3s", n, d)
	}
}
