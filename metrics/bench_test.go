package metrics

import (
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/track"
)

// staticSource stands for the kernel's aggregate table in the benchmark:
// what a scrape costs in user space (the real table is read by a batch
// lookup, measured in tracer's benchmarks).
type staticSource []events.Aggregate

func (s staticSource) Aggregates(fn func(a *events.Aggregate)) error {
	for i := range s {
		a := s[i]
		fn(&a)
	}
	return nil
}
func (staticSource) DeleteAggregates([]events.AggregateKey) error { return nil }
func (staticSource) AggregateOverflows() (uint64, error)          { return 0, nil }

type pathNamer struct{}

func (pathNamer) Workload(id uint64) (Workload, bool) {
	return Workload{Namespace: fmt.Sprintf("ns-%d", id%50), Pod: fmt.Sprintf("pod-%d", id), Container: "app"}, true
}

// BenchmarkScrape: a whole scrape, encoded as the text format, with
// `series` label sets and `stuck` sockets reported stuck, spread over the
// label sets. It reports how long the tracker's lock is held (what the
// event loop may wait for) apart from the whole.
func BenchmarkScrape(b *testing.B) {
	for _, tc := range []struct{ series, stuck int }{{100, 0}, {3000, 0}, {3000, 100_000}} {
		b.Run(fmt.Sprintf("series=%d/stuck=%d", tc.series, tc.stuck), func(b *testing.B) {
			src := make(staticSource, tc.series)
			for i := range src {
				src[i] = events.Aggregate{
					AggregateKey: events.AggregateKey{CgroupID: uint64(1000 + i), Port: uint16(8000 + i%100), Dir: events.DirInbound},
					Entered:      1e6, Closed: 1e6 - 40, Sum: time.Hour,
				}
				for j := 5; j < 25; j++ {
					src[i].Hist[j] = uint64(j * 1000)
				}
			}
			tk := track.New(track.Config{Threshold: time.Second, MaxSockets: tc.stuck + 1}, bootclock.New())
			proc := &events.Process{PID: 42, Comm: "couchdb"}
			for i := range tc.stuck {
				ev := events.Event{
					Kind: events.KindCloseWait, Sock: uint64(i + 1), FinBootNS: 1, BootNS: 1, AgeKnown: true,
					Family: events.FamilyIPv4, LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: uint16(8000 + i%100),
					RemoteAddr: netip.MustParseAddr("10.0.0.2"), RemotePort: uint16(30000 + i%30000),
					CgroupID: uint64(1000 + i%tc.series), Dir: events.DirInbound,
					Owners: []events.Owner{{Process: proc, FD: i}}, OwnerSource: events.OwnerProc,
				}
				tk.Observe(&ev, func(*events.Event) {})
			}
			if err := tk.Expire(int64(10*time.Second), nil, nil, func(*events.Event) {}); err != nil {
				b.Fatal(err)
			}
			if tk.Stuck() != tc.stuck {
				b.Fatalf("%d stuck, want %d", tk.Stuck(), tc.stuck)
			}
			c := New(Config{MaxSeries: 10_000, Version: "bench", Hook: "tp_btf"}, src, pathNamer{})
			c.SetSockets(tk)
			reg := prometheus.NewRegistry()
			reg.MustRegister(c)
			var locked time.Duration
			b.ResetTimer()
			for range b.N {
				fams, err := reg.Gather()
				if err != nil {
					b.Fatal(err)
				}
				for _, f := range fams {
					if _, err := expfmt.MetricFamilyToText(io.Discard, f); err != nil {
						b.Fatal(err)
					}
				}
				t0 := time.Now()
				for range tk.All() {
				}
				locked += time.Since(t0)
			}
			b.ReportMetric(float64(locked.Microseconds())/float64(b.N), "µs-locked/op")
		})
	}
}
