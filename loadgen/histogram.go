package loadgen

import (
	"math/bits"
	"time"
)

// histogram records durations in log-linear buckets: 64 sub-buckets per power
// of two of microseconds, so any quantile is within about 1.6% of the truth
// while a run of millions of requests costs a few kilobytes.
type histogram struct {
	counts [64 * 40]int64
	n      int64
	max    time.Duration
}

const subBuckets = 64

func bucketOf(us int64) int {
	if us < subBuckets {
		return int(us)
	}
	exp := bits.Len64(uint64(us)) - 7 // us >= 64 has at least 7 bits
	mant := us >> uint(exp)           // in [64, 128)
	return (exp+1)*subBuckets + int(mant-subBuckets)
}

// lowerBound is the smallest value, in microseconds, that lands in bucket b.
func lowerBound(b int) int64 {
	if b < subBuckets {
		return int64(b)
	}
	exp := b/subBuckets - 1
	mant := int64(b%subBuckets) + subBuckets
	return mant << uint(exp)
}

func (h *histogram) record(d time.Duration) {
	b := bucketOf(d.Microseconds())
	if b >= len(h.counts) {
		b = len(h.counts) - 1
	}
	h.counts[b]++
	h.n++
	if d > h.max {
		h.max = d
	}
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	if o.max > h.max {
		h.max = o.max
	}
}

// quantile returns the lower bound of the bucket holding quantile q (0..1).
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(q*float64(h.n-1)) + 1
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(lowerBound(i)) * time.Microsecond
		}
	}
	return h.max
}
