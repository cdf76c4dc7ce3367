package bench

import (
	"math"
	"math/bits"
	"time"
)

// histogram records durations in log-linear buckets, as HdrHistogram does:
// each power of two is split into 2^subBits equal sub-buckets, so a
// recorded value is off by less than 1/2^subBits (under 0.8%) from the value
// reported for it. It takes no locks and allocates nothing per Record; each
// worker owns one and they are merged once the workers are done.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    time.Duration
	max    time.Duration
}

const (
	subBits     = 7
	subBuckets  = 1 << subBits
	histBuckets = (64 - subBits + 1) * subBuckets
)

// bucketOf is the bucket of a duration of v nanoseconds.
func bucketOf(v uint64) int {
	if v < subBuckets {
		return int(v)
	}
	exp := bits.Len64(v) - subBits // >= 1
	return exp*subBuckets + int(v>>(exp-1)) - subBuckets
}

// lowOf is the smallest duration in bucket i, in nanoseconds; highOf the
// largest.
func lowOf(i int) uint64 {
	if i < subBuckets {
		return uint64(i)
	}
	exp := i / subBuckets
	return uint64(i%subBuckets+subBuckets) << (exp - 1)
}

func highOf(i int) uint64 {
	if i < subBuckets {
		return uint64(i)
	}
	exp := i / subBuckets
	return lowOf(i) + 1<<(exp-1) - 1
}

// Record adds one duration; negative ones count as zero.
func (h *histogram) Record(d time.Duration) {
	d = max(d, 0)
	h.counts[bucketOf(uint64(d))]++
	h.n++
	h.sum += d
	h.max = max(h.max, d)
}

// Merge adds o's durations to h.
func (h *histogram) Merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// Count is the number of durations recorded.
func (h *histogram) Count() uint64 { return h.n }

// Mean is the average duration; 0 when empty.
func (h *histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}

// Quantile returns the duration below which a fraction q of the recorded
// ones lie (the highest value of the bucket holding the q-th one, never above
// the largest recorded); 0 when empty.
func (h *histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(time.Duration(highOf(i)), h.max)
		}
	}
	return h.max
}
