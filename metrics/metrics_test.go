package metrics

import (
	"iter"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/track"
)

// tableSource is a kernel aggregate table for unit tests: it records
// deletions.
type tableSource struct {
	mu             sync.Mutex
	aggs           map[events.AggregateKey]events.Aggregate
	listeners      map[uint32][]events.Listener
	acceptFailures []events.AcceptFailure
}

func (s *tableSource) Listening() (map[uint32][]events.Listener, error) { return s.listeners, nil }

func (s *tableSource) AcceptFailures(fn func(events.AcceptFailure)) error {
	for _, f := range s.acceptFailures {
		fn(f)
	}
	return nil
}

func (s *tableSource) Aggregates(fn func(a *events.Aggregate)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.aggs {
		fn(&a)
	}
	return nil
}

func (s *tableSource) DeleteAggregates(keys []events.AggregateKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		delete(s.aggs, k)
	}
	return nil
}

func (s *tableSource) AggregateOverflows() (uint64, error) { return 0, nil }

// namer names cgroup id n "/unit-n.service"; ids in gone are dead.
type namer struct{ gone map[uint64]bool }

func (n namer) Workload(id uint64) (Workload, bool) {
	return Workload{Cgroup: "/unit-" + string(rune('a'+id)) + ".service"}, !n.gone[id]
}

func gather(t *testing.T, c *Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func key(cg uint64, port uint16) events.AggregateKey {
	return events.AggregateKey{CgroupID: cg, Port: port, Dir: events.DirInbound}
}

// The kernel's log2 µs histogram becomes classic buckets from about 1 ms
// to about 1 h, cumulative and exact, and native buckets holding the same
// counts.
func TestHistogramBuckets(t *testing.T) {
	var hist [events.HistBuckets]uint64
	hist[3] = 5  // [8, 16) µs: under the first classic bound
	hist[12] = 7 // [4.1, 8.2) ms
	hist[14] = 0 // empty, inside the native span
	hist[20] = 2 // [1.05, 2.1) s
	hist[35] = 1 // the open last bucket: only +Inf holds it
	src := &tableSource{aggs: map[events.AggregateKey]events.Aggregate{
		key(1, 80): {AggregateKey: key(1, 80), Entered: 15, Closed: 15, Hist: hist, Sum: 3 * time.Second},
	}}
	fams := gather(t, New(Config{}, src, namer{}))
	h := fams["tcptrace_fin_to_close_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 15 || h.GetSampleSum() != 3 {
		t.Errorf("count %d sum %v, want 15 and 3", h.GetSampleCount(), h.GetSampleSum())
	}
	b := h.GetBucket()
	if b[0].GetUpperBound() != 0.001024 || b[len(b)-1].GetUpperBound() != 4294.967296 {
		t.Errorf("bounds %v to %v, want 2^10 µs to 2^32 µs", b[0].GetUpperBound(), b[len(b)-1].GetUpperBound())
	}
	want := map[float64]uint64{0.001024: 5, 0.008192: 12, 1.048576: 12, 2.097152: 14, 4294.967296: 14}
	for _, bk := range b {
		if n, ok := want[bk.GetUpperBound()]; ok && bk.GetCumulativeCount() != n {
			t.Errorf("le=%v holds %d, want %d", bk.GetUpperBound(), bk.GetCumulativeCount(), n)
		}
	}
	// Native: delta-decode the one span back into counts by index.
	spans := h.GetPositiveSpan()
	if len(spans) != 1 || h.GetSchema() != 0 {
		t.Fatalf("native spans %v schema %d, want one span, schema 0", spans, h.GetSchema())
	}
	got := map[int]uint64{}
	idx, n := int(spans[0].GetOffset()), int64(0)
	for _, d := range h.GetPositiveDelta() {
		n += d
		if n != 0 {
			got[idx] = uint64(n)
		}
		idx++
	}
	for i, c := range hist {
		if c != 0 && got[i+nativeOffset] != c {
			t.Errorf("native bucket %d holds %d, want kernel bucket %d's %d", i+nativeOffset, got[i+nativeOffset], i, c)
		}
	}
	if len(got) != 4 {
		t.Errorf("native buckets %v, want the 4 kernel buckets in use", got)
	}
}

// Past MaxSeries label sets fold into "other" and are counted; stuck
// reports land on their series without waiting for a scrape.
func TestSeriesCapAndReports(t *testing.T) {
	src := &tableSource{aggs: map[events.AggregateKey]events.Aggregate{}}
	for i := uint64(1); i <= 4; i++ {
		src.aggs[key(i, 80)] = events.Aggregate{AggregateKey: key(i, 80), Entered: 10, Closed: 10 - i}
	}
	c := New(Config{MaxSeries: 2}, src, namer{})
	for range 3 {
		if err := c.Write(&events.Event{Kind: events.KindStuck, CgroupID: 1, LocalPort: 80, RemotePort: 5555, Dir: events.DirInbound}); err != nil {
			t.Fatal(err)
		}
	}
	fams := gather(t, c)
	var total, other float64
	for _, m := range fams["tcptrace_close_wait_sockets"].GetMetric() {
		total += m.GetGauge().GetValue()
		for _, l := range m.GetLabel() {
			if l.GetName() == "port" && l.GetValue() == Other {
				other += m.GetGauge().GetValue()
			}
		}
	}
	if n := len(fams["tcptrace_close_wait_sockets"].GetMetric()); n != 3 || total != 10 || other == 0 {
		t.Errorf("%d series holding %v sockets (%v in other), want 2 of their own and other, 10 in all", n, total, other)
	}
	if f := fams["tcptrace_metrics_series_folded_total"].GetMetric()[0].GetCounter().GetValue(); f != 2 {
		t.Errorf("folded %v, want 2", f)
	}
	var reports float64
	for _, m := range fams["tcptrace_stuck_reported_total"].GetMetric() {
		reports += m.GetCounter().GetValue()
	}
	if reports != 3 {
		t.Errorf("stuck reports %v, want 3", reports)
	}
}

// A workload whose cgroup is gone keeps its series for the grace period,
// then loses them and its kernel aggregates, unless sockets of it are
// still in CLOSE-WAIT.
func TestGoneWorkloadsPruned(t *testing.T) {
	src := &tableSource{aggs: map[events.AggregateKey]events.Aggregate{
		key(1, 80): {AggregateKey: key(1, 80), Entered: 5, Closed: 5}, // gone, nothing left
		key(2, 80): {AggregateKey: key(2, 80), Entered: 5, Closed: 4}, // gone, one in CLOSE-WAIT
		key(3, 80): {AggregateKey: key(3, 80), Entered: 5, Closed: 5}, // alive
	}}
	now := time.Unix(1000, 0)
	c := New(Config{Grace: time.Minute}, src, namer{gone: map[uint64]bool{1: true, 2: true}})
	c.now = func() time.Time { return now }
	series := func() int { return len(gather(t, c)["tcptrace_close_wait_sockets"].GetMetric()) }
	if n := series(); n != 3 {
		t.Fatalf("%d series, want 3 within the grace period", n)
	}
	now = now.Add(59 * time.Second)
	if err := c.Prune(); err != nil || len(src.aggs) != 3 {
		t.Fatalf("pruned within the grace period: %v, %d left", err, len(src.aggs))
	}
	now = now.Add(2 * time.Second)
	if n := series(); n != 2 {
		t.Errorf("%d series after the grace period, want 2", n)
	}
	if _, ok := src.aggs[key(1, 80)]; ok || len(src.aggs) != 2 {
		t.Errorf("kernel aggregates %v, want the gone workload's dropped and the one with a socket in CLOSE-WAIT kept", src.aggs)
	}
}

// stuckSockets is a tracker holding one stuck socket.
type stuckSockets struct{}

func (stuckSockets) All() iter.Seq[track.Info] {
	return func(yield func(track.Info) bool) {
		yield(track.Info{Stuck: true, CgroupID: 1, LocalPort: 80, Dir: events.DirInbound})
	}
}

// The catalog (docs/metrics.md is made from it) is what is served: every
// family a collector with everything to say writes is in it, with its
// type, help and labels, and every catalog entry is served.
func TestCatalogIsWhatIsServed(t *testing.T) {
	src := &tableSource{aggs: map[events.AggregateKey]events.Aggregate{key(1, 80): {AggregateKey: key(1, 80), Entered: 2, Closed: 1}},
		listeners:      map[uint32][]events.Listener{1: {{Local: netip.MustParseAddrPort("0.0.0.0:80"), CgroupID: 1, Queue: 1, Backlog: 4096}}},
		acceptFailures: []events.AcceptFailure{{PID: 7, Port: 80, Reason: "emfile", Count: 3, CgroupID: 1}}}
	c := New(Config{Version: "v1", Hook: "tp_btf", Lost: func() events.LostCounts {
		return events.LostCounts{events.LostRingbufFull: 1}
	}}, src, namer{})
	c.SetSockets(stuckSockets{})
	if err := c.Write(&events.Event{Kind: events.KindDestroyed, CgroupID: 1, LocalPort: 80, Dir: events.DirInbound}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c, NewKubeCollector(func() bool { return true }, func() KubeStats { return KubeStats{Hits: 1} }))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	catalog := map[string]Info{}
	for _, i := range Catalog() {
		catalog[i.FullName()] = i
	}
	served := map[string]bool{}
	for _, f := range fams {
		served[f.GetName()] = true
		i, ok := catalog[f.GetName()]
		if !ok {
			t.Errorf("%s served, not in the catalog", f.GetName())
			continue
		}
		if got := strings.ToLower(f.GetType().String()); got != i.Type || f.GetHelp() != i.Help {
			t.Errorf("%s served as %s %q, catalog says %s %q", f.GetName(), got, f.GetHelp(), i.Type, i.Help)
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName())
			}
			want := slices.Sorted(slices.Values(i.Labels))
			if !slices.Equal(labels, want) {
				t.Errorf("%s served with labels %v, catalog says %v", f.GetName(), labels, want)
			}
		}
	}
	for name := range catalog {
		if !served[name] {
			t.Errorf("%s in the catalog, not served", name)
		}
	}
}

// tracked is a tracker holding the given sockets.
type tracked []track.Info

func (t tracked) All() iter.Seq[track.Info] { return slices.Values(t) }

// The oldest socket's age, per series of the count: the oldest tracked
// socket of the series, 0 for a series whose sockets are all younger than
// the threshold (none tracked), absent for a series with none in
// CLOSE-WAIT.
func TestOldestCloseWait(t *testing.T) {
	src := &tableSource{aggs: map[events.AggregateKey]events.Aggregate{
		key(1, 80): {AggregateKey: key(1, 80), Entered: 3},            // two tracked, one young
		key(2, 80): {AggregateKey: key(2, 80), Entered: 1},            // young only
		key(3, 80): {AggregateKey: key(3, 80), Entered: 2, Closed: 2}, // none left
	}}
	c := New(Config{}, src, namer{})
	const s = int64(time.Second)
	c.bootNow = func() int64 { return 1000 * s }
	c.SetSockets(tracked{
		{CgroupID: 1, LocalPort: 80, RemotePort: 4001, Dir: events.DirInbound, FinBootNS: 990 * s, Stuck: true},
		{CgroupID: 1, LocalPort: 80, RemotePort: 4002, Dir: events.DirInbound, FinBootNS: 700 * s, Stuck: true},
	})
	got := map[string]float64{}
	for _, m := range gather(t, c)["tcptrace_close_wait_oldest_seconds"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "cgroup" {
				got[l.GetValue()] = m.GetGauge().GetValue()
			}
		}
	}
	want := map[string]float64{"/unit-b.service": 300, "/unit-c.service": 0}
	if len(got) != len(want) || got["/unit-b.service"] != 300 || got["/unit-c.service"] != 0 {
		t.Errorf("oldest ages %v, want %v", got, want)
	}
}

// Listeners of one workload and port (IPv4 and IPv6, in two namespaces)
// are one series, summed; past the series cap the rest fold into "other",
// the same ones at each scrape (by port).
func TestListenerSeries(t *testing.T) {
	ap := netip.MustParseAddrPort
	src := &tableSource{listeners: map[uint32][]events.Listener{
		1: {
			{Local: ap("0.0.0.0:5984"), CgroupID: 1, Queue: 3, Backlog: 128, Drops: 10},
			{Local: ap("[::]:5984"), CgroupID: 1, Queue: 1, Backlog: 128, Drops: 2},
			{Local: ap("127.0.0.1:9000"), CgroupID: 2, Queue: 0, Backlog: 4, Drops: 0},
		},
		2: {
			{Local: ap("10.0.0.1:5984"), CgroupID: 1, Queue: 0, Backlog: 128, Drops: 1},
			{Local: ap("10.0.0.1:9100"), CgroupID: 3, Queue: 2, Backlog: 8, Drops: 5},
			{Local: ap("10.0.0.1:9200"), CgroupID: 3, Queue: 1, Backlog: 8, Drops: 6},
		},
	}}
	for range 3 {
		fams := gather(t, New(Config{MaxSeries: 2}, src, namer{}))
		got := map[string][3]float64{}
		for i, name := range []string{"tcptrace_listen_queue_length", "tcptrace_listen_queue_limit", "tcptrace_listen_drops_total"} {
			for _, m := range fams[name].GetMetric() {
				var port, cg string
				for _, l := range m.GetLabel() {
					switch l.GetName() {
					case "port":
						port = l.GetValue()
					case "cgroup":
						cg = l.GetValue()
					}
				}
				v := got[cg+" "+port]
				v[i] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
				got[cg+" "+port] = v
			}
		}
		want := map[string][3]float64{
			"/unit-b.service 5984": {4, 384, 13},
			"/unit-c.service 9000": {0, 4, 0},
			"other other":          {3, 16, 11},
		}
		if len(got) != len(want) {
			t.Fatalf("series %v, want %v", got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: queue, limit, drops %v, want %v", k, got[k], v)
			}
		}
	}
}

// accept() failures, kept per process in the kernel, are summed by the
// listener's workload, port and reason.
func TestAcceptFailureSeries(t *testing.T) {
	src := &tableSource{acceptFailures: []events.AcceptFailure{
		{PID: 7, Port: 5984, Reason: "emfile", Count: 3, CgroupID: 1},
		{PID: 8, Port: 5984, Reason: "emfile", Count: 4, CgroupID: 1}, // another worker of the same pod
		{PID: 8, Port: 5984, Reason: "enfile", Count: 1, CgroupID: 1},
		{PID: 9, Port: 80, Reason: "emfile", Count: 2, CgroupID: 2},
	}}
	got := map[string]float64{}
	for _, m := range gather(t, New(Config{}, src, namer{}))["tcptrace_accept_failures_total"].GetMetric() {
		k := ""
		for _, l := range m.GetLabel() {
			if v := l.GetValue(); v != "" {
				k += l.GetName() + "=" + v + " "
			}
		}
		got[k] = m.GetCounter().GetValue()
	}
	want := map[string]float64{
		"cgroup=/unit-b.service port=5984 reason=emfile ": 7,
		"cgroup=/unit-b.service port=5984 reason=enfile ": 1,
		"cgroup=/unit-c.service port=80 reason=emfile ":   2,
	}
	if len(got) != len(want) {
		t.Fatalf("series %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}
