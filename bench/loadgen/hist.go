package main

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// Log-linear latency histogram with a fixed number of buckets.
//
// Values are recorded in microseconds:
//   - [0, 1024) µs: one bucket per microsecond;
//   - [2^e, 2^(e+1)) µs for e = 10..25: 128 equal sub-buckets each, so a
//     bucket is at most 1/128 (0.78%) of its value wide and the reported
//     midpoint is within 0.4% of any value in it.
//
// The top octave ends at 2^26 µs (~67 s); larger values land in the last
// bucket. The exact maximum is tracked separately.
const (
	histLinear   = 1024 // linear buckets, 1 µs each
	histSubBits  = 7
	histSubCount = 1 << histSubBits // sub-buckets per octave
	histMinExp   = 10               // log2(histLinear)
	histMaxExp   = 25
	histBuckets  = histLinear + (histMaxExp-histMinExp+1)*histSubCount
)

// histogram is safe for concurrent use; recording is two atomic adds in the
// common case (plus a CAS when a new maximum is seen).
type histogram struct {
	counts [histBuckets]atomic.Uint64
	maxNs  atomic.Int64
}

func bucketOf(us uint64) int {
	if us < histLinear {
		return int(us)
	}
	e := bits.Len64(us) - 1
	if e > histMaxExp {
		return histBuckets - 1
	}
	return histLinear + (e-histMinExp)*histSubCount + int((us>>(e-histSubBits))&(histSubCount-1))
}

// bucketBounds returns the [lo, hi) range of bucket i in microseconds.
func bucketBounds(i int) (lo, hi float64) {
	if i < histLinear {
		return float64(i), float64(i + 1)
	}
	j := i - histLinear
	e := histMinExp + j/histSubCount
	sub := j % histSubCount
	width := uint64(1) << (e - histSubBits)
	l := uint64(1)<<e + uint64(sub)*width
	return float64(l), float64(l + width)
}

// record adds one latency sample given in nanoseconds.
func (h *histogram) record(ns int64) {
	if ns < 0 {
		ns = 0
	}
	h.counts[bucketOf(uint64(ns)/1000)].Add(1)
	for {
		m := h.maxNs.Load()
		if ns <= m || h.maxNs.CompareAndSwap(m, ns) {
			return
		}
	}
}

// histSnapshot is a point-in-time copy used to compute percentiles.
type histSnapshot struct {
	counts [histBuckets]uint64
	total  uint64
	maxNs  int64
}

func (h *histogram) snapshot() *histSnapshot {
	s := &histSnapshot{maxNs: h.maxNs.Load()}
	for i := range h.counts {
		c := h.counts[i].Load()
		s.counts[i] = c
		s.total += c
	}
	return s
}

// maxMs returns the exact largest recorded value in milliseconds.
func (s *histSnapshot) maxMs() float64 {
	if s.total == 0 {
		return 0
	}
	return float64(s.maxNs) / 1e6
}

// percentileMs returns the q-quantile (0 < q <= 1) in milliseconds: the
// midpoint of the bucket holding the sample of rank ceil(q*total), capped at
// the exact maximum so that percentiles never exceed max.
func (s *histSnapshot) percentileMs(q float64) float64 {
	if s.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(s.total)))
	if rank < 1 {
		rank = 1
	}
	if rank > s.total {
		rank = s.total
	}
	var cum uint64
	for i, c := range s.counts {
		cum += c
		if cum >= rank {
			lo, hi := bucketBounds(i)
			v := (lo + hi) / 2 / 1000
			if m := s.maxMs(); v > m {
				v = m
			}
			return v
		}
	}
	return s.maxMs()
}
