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
