package bench

import (
	"math"
	"testing"
)

// TestHistQuantile checks the quantiles of a histogram's window between
// two scrapes: interpolated within the bucket, from the counts between them.
func TestHistQuantile(t *testing.T) {
	bounds := []float64{0.001, 0.002, 0.005}
	old := histSample{bounds: bounds, counts: []uint64{10, 10, 10}, total: 10}
	cur := histSample{bounds: bounds, counts: []uint64{60, 100, 110}, total: 110}
	for _, tc := range []struct {
		q, want float64
	}{
		{0.5, 0.001},
		{0.25, 0.0005},
		{0.99, 0.002 + 0.003*(99-90)/10.0},
	} {
		if got := cur.quantile(old, tc.q); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("q%v = %v, want %v", tc.q, got, tc.want)
		}
	}
	if n := cur.count(old); n != 100 {
		t.Errorf("count %d, want 100", n)
	}
	// Beyond the last bound, the quantile is that bound.
	slow := histSample{bounds: bounds, counts: []uint64{10, 10, 100}, total: 110}
	if got := slow.quantile(old, 0.99); got != 0.005 {
		t.Errorf("q0.99 past the last bound = %v, want 0.005", got)
	}
	if got := old.quantile(old, 0.99); !math.IsNaN(got) {
		t.Errorf("q0.99 of nothing = %v, want NaN", got)
	}
}

// TestHistWindowsTogether checks that the windows of several servers'
// histograms add up to the quantiles of their observations together.
func TestHistWindowsTogether(t *testing.T) {
	bounds := []float64{0.001, 0.002, 0.005}
	// One node's window: 50 observations under 1 ms, 40 under 2 ms.
	a0 := histSample{bounds: bounds, counts: []uint64{10, 10, 10}, total: 10}
	a1 := histSample{bounds: bounds, counts: []uint64{60, 100, 100}, total: 100}
	// Another's: 10 observations between 2 and 5 ms.
	b0 := histSample{bounds: bounds, counts: []uint64{5, 5, 5}, total: 5}
	b1 := histSample{bounds: bounds, counts: []uint64{5, 5, 15}, total: 15}
	var all histSample
	for _, w := range [][2]histSample{{a0, a1}, {b0, b1}} {
		d, ok := w[1].since(w[0])
		if !ok {
			t.Fatal("since refused a window of the same buckets")
		}
		if all, ok = all.plus(d); !ok {
			t.Fatal("plus refused windows of the same buckets")
		}
	}
	if all.total != 100 {
		t.Errorf("%d observations together, want 100", all.total)
	}
	if got, want := all.quantile(histSample{}, 0.95), 0.002+0.003*(95-90)/10.0; math.Abs(got-want) > 1e-12 {
		t.Errorf("q0.95 together = %v, want %v", got, want)
	}
	if _, ok := a1.since(histSample{bounds: []float64{0.001}, counts: []uint64{1}, total: 1}); ok {
		t.Error("since took a sample of other buckets")
	}
	if _, ok := all.plus(histSample{bounds: []float64{0.001}, counts: []uint64{1}, total: 1}); ok {
		t.Error("plus took a sample of other buckets")
	}
}
