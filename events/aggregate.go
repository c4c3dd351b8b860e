package events

import "time"

// Direction says which side of a connection a socket is, and so which of
// its ports names the service.
type Direction uint8

const (
	// DirInbound: an accepted socket, or one whose port the application
	// bound: the service is its local port.
	DirInbound Direction = iota + 1
	// DirOutbound: a connected socket whose local port connect() chose: the
	// service is the remote port. A client's pool of connections to one
	// server port is one key, not one per ephemeral port.
	DirOutbound
	// DirOverflow: the kernel's aggregate table was full; counts of keys
	// that did not fit are folded into this one.
	DirOverflow
)

func (d Direction) String() string {
	switch d {
	case DirInbound:
		return "inbound"
	case DirOutbound:
		return "outbound"
	case DirOverflow:
		return "other"
	}
	return "unknown"
}

// HistBuckets is the number of FIN-to-close histogram buckets.
const HistBuckets = 36

// HistUpperBound is the exclusive upper bound of histogram bucket i:
// bucket i counts closes in [2^i, 2^(i+1)) µs, bucket 0 also those under
// 1 µs; the last bucket has no upper bound (it returns the largest
// Duration).
func HistUpperBound(i int) time.Duration {
	if i >= HistBuckets-1 {
		return time.Duration(1<<63 - 1)
	}
	return time.Duration(1<<(i+1)) * time.Microsecond
}

// HistBucket is the bucket the kernel puts a FIN-to-close latency in.
func HistBucket(d time.Duration) int {
	us := uint64(d / time.Microsecond)
	if d <= 0 || us < 2 {
		return 0
	}
	b := 63
	for us>>b == 0 {
		b--
	}
	return min(b, HistBuckets-1)
}

// AggregateKey names one aggregate: the socket's cgroup v2 id (its
// container, or its systemd unit), its service port and its direction.
type AggregateKey struct {
	CgroupID uint64
	Port     uint16
	Dir      Direction
}

// Aggregate counts, in the kernel, the sockets of one key that entered
// CLOSE-WAIT and how they left it, since tcptrace started. Entered minus
// Closed minus Aborted is the number in CLOSE-WAIT now.
type Aggregate struct {
	AggregateKey
	// Entered counts sockets that entered CLOSE-WAIT, and those found in
	// it by the start-up listing.
	Entered uint64
	// Closed counts sockets the application closed (or shut down).
	Closed uint64
	// Aborted counts sockets that left CLOSE-WAIT otherwise.
	Aborted uint64
	// Hist counts closes by FIN-to-close latency (see HistUpperBound), for
	// the sockets whose FIN tcptrace saw: not those found at start-up.
	Hist [HistBuckets]uint64
	// Sum adds up the latencies Hist counts (to the µs).
	Sum time.Duration
}

// InCloseWait is the number of the key's sockets in CLOSE-WAIT now.
func (a *Aggregate) InCloseWait() uint64 {
	left := a.Closed + a.Aborted
	if left > a.Entered {
		return 0
	}
	return a.Entered - left
}

// Quantile estimates the q-quantile (0 < q <= 1) of the FIN-to-close
// latency from the histogram: the upper bound of the bucket that holds it
// (so at most twice the true value). ok is false without any close.
func Quantile(hist *[HistBuckets]uint64, q float64) (d time.Duration, ok bool) {
	var total uint64
	for _, n := range hist {
		total += n
	}
	if total == 0 {
		return 0, false
	}
	rank := uint64(q*float64(total) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, n := range hist {
		seen += n
		if seen >= rank {
			return HistUpperBound(i), true
		}
	}
	return HistUpperBound(HistBuckets - 1), true
}
