package events

import (
	"testing"
	"time"
)

// The buckets match the kernel's (bpf/tcptrace.bpf.c, hist_bucket): bucket
// i holds [2^i, 2^(i+1)) µs, bucket 0 also less, the last everything more.
func TestHistBucket(t *testing.T) {
	for d, want := range map[time.Duration]int{
		0:                        0,
		500 * time.Nanosecond:    0,
		1999 * time.Nanosecond:   0,
		2 * time.Microsecond:     1,
		5 * time.Millisecond:     12,
		200 * time.Millisecond:   17,
		1500 * time.Millisecond:  20,
		time.Hour:                31,
		24 * time.Hour:           HistBuckets - 1,
		time.Duration(1<<62 - 1): HistBuckets - 1,
	} {
		if got := HistBucket(d); got != want {
			t.Errorf("HistBucket(%v) = %d, want %d", d, got, want)
		}
		if b := HistBucket(d); b < HistBuckets-1 && d >= HistUpperBound(b) {
			t.Errorf("%v is not below its bucket's upper bound %v", d, HistUpperBound(b))
		}
	}
}

func TestQuantileAndInCloseWait(t *testing.T) {
	var h [HistBuckets]uint64
	if _, ok := Quantile(&h, 0.99); ok {
		t.Error("Quantile of an empty histogram says ok")
	}
	h[3], h[12] = 90, 10
	if q, _ := Quantile(&h, 0.5); q != HistUpperBound(3) {
		t.Errorf("median %v, want %v", q, HistUpperBound(3))
	}
	if q, _ := Quantile(&h, 0.99); q != HistUpperBound(12) {
		t.Errorf("p99 %v, want %v", q, HistUpperBound(12))
	}
	a := Aggregate{Entered: 10, Closed: 6, Aborted: 1}
	if a.InCloseWait() != 3 {
		t.Errorf("InCloseWait = %d, want 3", a.InCloseWait())
	}
	// Counters read while they change can momentarily show more exits.
	a = Aggregate{Entered: 5, Closed: 6}
	if a.InCloseWait() != 0 {
		t.Errorf("InCloseWait = %d with more exits than entries, want 0", a.InCloseWait())
	}
	for _, d := range []Direction{DirInbound, DirOutbound, DirOverflow} {
		if d.String() == "unknown" {
			t.Errorf("direction %d has no name", d)
		}
	}
}
