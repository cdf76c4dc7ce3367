package bench

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBuckets(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 127, 128, 129, 255, 256, 257, 1000, 1 << 20, 1<<40 + 12345, 1<<63 + 1} {
		i := bucketOf(v)
		if i < prev {
			t.Fatalf("bucketOf(%d) = %d, below the bucket of a smaller value (%d)", v, i, prev)
		}
		prev = i
		if lo, hi := lowOf(i), highOf(i); v < lo || v > hi {
			t.Fatalf("bucketOf(%d) = %d, which holds [%d, %d]", v, i, lo, hi)
		}
		if i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d, out of %d buckets", v, i, histBuckets)
		}
	}
	for i := 1; i < histBuckets; i++ {
		if got, want := lowOf(i), highOf(i-1)+1; got != want {
			t.Fatalf("lowOf(%d) = %d, want %d (buckets must tile)", i, got, want)
		}
	}
}

func TestQuantile(t *testing.T) {
	var h histogram
	if got := h.Quantile(0.99); got != 0 {
		t.Fatalf("empty Quantile(0.99) = %v, want 0", got)
	}
	r := rand.New(rand.NewPCG(1, 2))
	var all []time.Duration
	for range 100_000 {
		d := time.Duration(r.ExpFloat64() * float64(time.Millisecond))
		all = append(all, d)
		h.Record(d)
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := all[int(q*float64(len(all)))-1]
		got := h.Quantile(q)
		if diff := float64(got-exact) / float64(exact); diff < 0 || diff > 0.01 {
			t.Errorf("Quantile(%v) = %v, exact %v: off by %.2f%%", q, got, exact, 100*diff)
		}
	}
	if got, want := h.Quantile(1), all[len(all)-1]; got != want {
		t.Errorf("Quantile(1) = %v, want the largest, %v", got, want)
	}
	var m histogram
	m.Merge(&h)
	m.Merge(&h)
	if got, want := m.Count(), 2*h.Count(); got != want {
		t.Errorf("merged Count() = %d, want %d", got, want)
	}
	if got, want := m.Quantile(0.5), h.Quantile(0.5); got != want {
		t.Errorf("merged Quantile(0.5) = %v, want %v", got, want)
	}
}
