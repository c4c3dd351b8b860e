package report

import (
	"errors"
	"fmt"
	"iter"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/attribute"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/metrics"
	"github.com/tcptrace/tcptrace/tracer"
	"github.com/tcptrace/tcptrace/track"
)

// What the Builder is given in tcptrace.
var (
	_ Source  = (*tracer.Tracer)(nil)
	_ Sockets = (*track.Tracker)(nil)
	_ Namer   = (*attribute.Workloads)(nil)
)

// fakeSource is the kernel: aggregates and the CLOSE-WAIT table.
type fakeSource struct {
	mu       sync.Mutex
	aggs     map[events.AggregateKey]*events.Aggregate
	table    []events.Event
	aggErr   error
	tableErr error
	accepts  []events.AcceptFailure
}

func (f *fakeSource) AcceptFailures(fn func(events.AcceptFailure)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.accepts {
		fn(a)
	}
	return nil
}

func newFakeSource() *fakeSource {
	return &fakeSource{aggs: make(map[events.AggregateKey]*events.Aggregate)}
}

func (f *fakeSource) Aggregates(fn func(a *events.Aggregate)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.aggErr != nil {
		return f.aggErr
	}
	for _, a := range f.aggs {
		c := *a
		fn(&c)
	}
	return nil
}

func (f *fakeSource) Table(fn func(ev *events.Event)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.table {
		ev := f.table[i]
		fn(&ev)
	}
	return f.tableErr
}

// agg returns the aggregate of k, created empty.
func (f *fakeSource) agg(k events.AggregateKey) *events.Aggregate {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.aggs[k]
	if a == nil {
		a = &events.Aggregate{AggregateKey: k}
		f.aggs[k] = a
	}
	return a
}

func (f *fakeSource) update(k events.AggregateKey, fn func(a *events.Aggregate)) {
	a := f.agg(k)
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(a)
}

type fakeSockets []track.Info

func (s fakeSockets) All() iter.Seq[track.Info] { return slices.Values(s) }

type fakeNamer map[uint64]metrics.Workload

func (n fakeNamer) Workload(id uint64) (metrics.Workload, bool) {
	if w, ok := n[id]; ok {
		return w, true
	}
	return metrics.Workload{Cgroup: fmt.Sprintf("/cgroup-%d", id)}, true
}

// fakeClock starts at a fixed time and moves when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *fakeClock) add(d time.Duration) { c.set(c.Now().Add(d)) }

var (
	keyAPI   = events.AggregateKey{CgroupID: 101, Port: 8080, Dir: events.DirInbound}
	keyDB    = events.AggregateKey{CgroupID: 202, Port: 5432, Dir: events.DirOutbound}
	names    = fakeNamer{101: {Namespace: "shop", Pod: "api-1", Container: "api"}, 202: {Cgroup: "/system.slice/worker.service"}}
	rowOfAPI = Workload{Namespace: "shop", Pod: "api-1", Container: "api"}
)

func mustReport(t *testing.T, b *Builder) Report {
	t.Helper()
	rep, err := b.Report()
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func findRow(rep Report, w Workload, port uint16, dir events.Direction) (Row, bool) {
	for _, r := range rep.Rows {
		if r.Workload == w && r.Port == port && r.Direction == dir.String() {
			return r, true
		}
	}
	return Row{}, false
}

func within(got, want, tolerance float64) bool {
	return math.Abs(got-want) <= tolerance*math.Abs(want)
}

// feeder runs the kernel at given rates (per second: entered, closed),
// sampling each second with jitter.
type feeder struct {
	t      *testing.T
	b      *Builder
	src    *fakeSource
	clk    *fakeClock
	rng    *rand.Rand
	start  time.Time
	last   time.Time
	totals map[events.AggregateKey]*[2]float64
}

func newFeeder(t *testing.T, b *Builder, src *fakeSource, clk *fakeClock) *feeder {
	return &feeder{t: t, b: b, src: src, clk: clk, rng: rand.New(rand.NewPCG(1, 2)), start: clk.Now(), last: clk.Now(),
		totals: make(map[events.AggregateKey]*[2]float64)}
}

// run runs from second from for secs seconds.
func (f *feeder) run(from, secs int, rates map[events.AggregateKey][2]float64) {
	f.t.Helper()
	for i := from; i < from+secs; i++ {
		at := f.start.Add(time.Duration(i)*time.Second + time.Duration(f.rng.IntN(200))*time.Millisecond)
		dt := at.Sub(f.last).Seconds()
		f.last = at
		for k, r := range rates {
			tot := f.totals[k]
			if tot == nil {
				tot = new([2]float64)
				f.totals[k] = tot
			}
			tot[0] += r[0] * dt
			tot[1] += r[1] * dt
			f.src.update(k, func(a *events.Aggregate) { a.Entered, a.Closed = uint64(tot[0]), uint64(tot[1]) })
		}
		f.clk.set(at)
		if err := f.b.Sample(); err != nil {
			f.t.Fatal(err)
		}
	}
}

// TestRates: of two keys leaking at different rates the faster comes
// first, and the rates (new, closes, growth per minute) are within 20 % of
// the truth, over the window or, with fewer samples, over what there is.
func TestRates(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	b := NewBuilder(Config{Now: clk.Now}, src, nil, names, nil)
	f := newFeeder(t, b, src, clk)
	// Per second: entered, closed. api leaks 600/min; db 240/min with 120
	// closes, so grows by 120/min.
	rates := map[events.AggregateKey][2]float64{keyAPI: {10, 0}, keyDB: {4, 2}}

	// One sample: no rate yet.
	f.run(0, 1, rates)
	rep := mustReport(t, b)
	for _, r := range rep.Rows {
		if r.NewPerMinute != 0 || r.ClosesPerMinute != 0 || r.GrowthPerMinute != 0 {
			t.Errorf("rates after one sample: %+v", r)
		}
	}
	if rep.Window != DefaultWindow {
		t.Errorf("window %v", rep.Window)
	}

	check := func(what string) {
		t.Helper()
		rep := mustReport(t, b)
		if len(rep.Rows) != 2 {
			t.Fatalf("%s: %d rows, want 2: %+v", what, len(rep.Rows), rep.Rows)
		}
		api, db := rep.Rows[0], rep.Rows[1]
		if api.Workload != rowOfAPI || api.Port != 8080 || api.Direction != "inbound" || api.CgroupID != 101 {
			t.Fatalf("%s: first row %+v, want the faster leak, api's", what, api)
		}
		if db.Workload != (Workload{Cgroup: "/system.slice/worker.service"}) || db.Port != 5432 || db.Direction != "outbound" {
			t.Fatalf("%s: second row %+v, want db's", what, db)
		}
		for _, c := range []struct {
			name      string
			got, want float64
		}{
			{"api new", api.NewPerMinute, 600}, {"api growth", api.GrowthPerMinute, 600},
			{"db new", db.NewPerMinute, 240}, {"db closes", db.ClosesPerMinute, 120}, {"db growth", db.GrowthPerMinute, 120},
		} {
			if !within(c.got, c.want, 0.2) {
				t.Errorf("%s: %s %.2f/min, want %.0f ±20 %%", what, c.name, c.got, c.want)
			}
		}
		if api.ClosesPerMinute != 0 {
			t.Errorf("%s: api closes %.2f/min", what, api.ClosesPerMinute)
		}
		if api.InCloseWait == 0 || api.InCloseWait != api.History[len(api.History)-1] {
			t.Errorf("%s: api in CLOSE-WAIT %d, history %v", what, api.InCloseWait, api.History)
		}
	}
	// Less than the window: what there is.
	f.run(1, 11, rates)
	check("12 s")
	// A minute of other rates (db leaking fastest), then 90 s as before:
	// only the window counts.
	f.run(12, 60, map[events.AggregateKey][2]float64{keyAPI: {1, 0}, keyDB: {30, 0}})
	f.run(72, 90, rates)
	check("162 s")

	// No sample in the window any more: no rates, but the rows stay (in
	// CLOSE-WAIT).
	clk.add(2 * time.Minute)
	rep = mustReport(t, b)
	if len(rep.Rows) != 2 || rep.Rows[0].GrowthPerMinute != 0 {
		t.Errorf("stale samples: %+v", rep.Rows)
	}
}

// TestRatesWindowOnly: a burst before the window does not count.
func TestRatesWindowOnly(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	b := NewBuilder(Config{Now: clk.Now, Window: 30 * time.Second}, src, nil, names, nil)
	sample := func() {
		if err := b.Sample(); err != nil {
			t.Fatal(err)
		}
	}
	sample()
	for range 10 {
		clk.add(time.Second)
		src.update(keyAPI, func(a *events.Aggregate) { a.Entered += 100; a.Closed += 100 })
		sample()
	}
	for range 40 {
		clk.add(time.Second)
		src.update(keyAPI, func(a *events.Aggregate) { a.Entered++; a.Closed++ })
		sample()
	}
	rep := mustReport(t, b)
	if len(rep.Rows) != 1 {
		t.Fatalf("rows %+v", rep.Rows)
	}
	if r := rep.Rows[0]; r.NewPerMinute != 60 || r.ClosesPerMinute != 60 || r.GrowthPerMinute != 0 {
		t.Errorf("over the last 30 s: %+v, want 60 new and closes per minute, no growth", r)
	}
	if rep.Window != 30*time.Second {
		t.Errorf("window %v", rep.Window)
	}
}

// A leak on a port not seen before: the burst that creates the row is in
// its rates, not their base, and the forecast follows (issue 19.3: five
// sockets entering in the first 47 s read as 0/min).
func TestRatesOfANewRow(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, 1234, 100, 160)
	src, clk := newFakeSource(), newFakeClock()
	var socks fakeSockets
	for i := range 5 {
		socks = append(socks, stuckSocket(101, 8080, uint16(40000+i), events.DirInbound, owner(1234, "api", 10+i)))
	}
	b := NewBuilder(Config{Now: clk.Now, ProcRoot: root}, src, socks, names, nil)
	src.update(keyDB, func(a *events.Aggregate) { a.Entered, a.Closed = 3, 3 })
	for range 10 {
		if err := b.Sample(); err != nil {
			t.Fatal(err)
		}
		clk.add(time.Second)
	}
	// Five at once on the new row, then nothing for 47 s.
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered = 5 })
	for range 48 {
		if err := b.Sample(); err != nil {
			t.Fatal(err)
		}
		clk.add(time.Second)
	}
	clk.add(-time.Second)
	r, ok := findRow(mustReport(t, b), rowOfAPI, 8080, events.DirInbound)
	if !ok {
		t.Fatal("no api row")
	}
	// Five over the 48 s since the sample before the burst.
	if want := 5 / 48.0 * 60; !within(r.NewPerMinute, want, 0.01) || !within(r.GrowthPerMinute, want, 0.01) {
		t.Errorf("new %.2f/min, growth %.2f/min, want %.2f/min each", r.NewPerMinute, r.GrowthPerMinute, want)
	}
	if r.ExhaustionNever || r.Exhaustion <= 0 {
		t.Errorf("exhaustion %v (never %v), want a forecast: 60 descriptors left", r.Exhaustion, r.ExhaustionNever)
	}

	// What the first sample finds is only the base: the start-up
	// listing's sockets, of unknown age, are not new.
	src, clk = newFakeSource(), newFakeClock()
	b = NewBuilder(Config{Now: clk.Now}, src, nil, names, nil)
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered = 4500 })
	for range 11 {
		if err := b.Sample(); err != nil {
			t.Fatal(err)
		}
		clk.add(time.Second)
	}
	clk.add(-time.Second)
	if r, _ := findRow(mustReport(t, b), rowOfAPI, 8080, events.DirInbound); r.NewPerMinute != 0 || r.InCloseWait != 4500 {
		t.Errorf("found at the first sample: new %.2f/min, %d in CLOSE-WAIT; want 0/min, 4500", r.NewPerMinute, r.InCloseWait)
	}
}

// TestQuantiles: closes, quantiles and max are the upper bounds of the
// buckets from a known histogram; Hist is a copy.
func TestQuantiles(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	src.update(keyAPI, func(a *events.Aggregate) {
		a.Entered, a.Closed = 100, 100
		a.Hist[3] = 50  // [8, 16) µs
		a.Hist[10] = 40 // [1024, 2048) µs
		a.Hist[20] = 9
		a.Hist[25] = 1
	})
	b := NewBuilder(Config{Now: clk.Now}, src, nil, names, nil)
	b.Sample()
	clk.add(time.Second)
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered++; a.Closed++; a.Hist[3]++ }) // activity
	b.Sample()
	rep := mustReport(t, b)
	if len(rep.Rows) != 1 {
		t.Fatalf("rows %+v", rep.Rows)
	}
	r := rep.Rows[0]
	if r.Closes != 101 {
		t.Errorf("closes %d, want 101", r.Closes)
	}
	for _, c := range []struct {
		name      string
		got, want time.Duration
	}{
		{"p50", r.P50, 16 * time.Microsecond},
		{"p90", r.P90, 2048 * time.Microsecond},
		{"p99", r.P99, events.HistUpperBound(20)},
		{"max", r.Max, events.HistUpperBound(25)},
	} {
		if c.got != c.want {
			t.Errorf("%s %v, want %v", c.name, c.got, c.want)
		}
	}
	if len(r.Hist) != events.HistBuckets || r.Hist[3] != 51 || r.Hist[25] != 1 {
		t.Errorf("hist %v", r.Hist)
	}
	r.Hist[3] = 0
	if rep2 := mustReport(t, b); rep2.Rows[0].Hist[3] != 51 {
		t.Error("the report's histogram is shared")
	}

	// Without closes: no quantiles.
	src.update(keyDB, func(a *events.Aggregate) { a.Entered = 3 })
	rep = mustReport(t, b)
	db, ok := findRow(rep, Workload{Cgroup: "/system.slice/worker.service"}, 5432, events.DirOutbound)
	if !ok || db.Closes != 0 || db.P50 != 0 || db.Max != 0 || db.InCloseWait != 3 {
		t.Errorf("db row %+v (found %v)", db, ok)
	}
}

// fakeProc makes /proc/PID/fd with n entries and /proc/PID/limits.
func fakeProc(t *testing.T, root string, pid, fds, limit int) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprint(pid))
	os.RemoveAll(filepath.Join(dir, "fd"))
	if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range fds {
		if err := os.Symlink("socket:[1]", filepath.Join(dir, "fd", fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	limits := fmt.Sprintf(`Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            %d                 524288               files
Max locked memory         8388608              8388608              bytes
`, limit)
	if err := os.WriteFile(filepath.Join(dir, "limits"), []byte(limits), 0o644); err != nil {
		t.Fatal(err)
	}
}

func owner(pid int, comm string, fd int) events.Owner {
	return events.Owner{Process: &events.Process{PID: pid, Comm: comm}, FD: fd}
}

func stuckSocket(id uint64, local, remote uint16, dir events.Direction, owners ...events.Owner) track.Info {
	return track.Info{
		Sock: rand.Uint64(), Family: events.FamilyIPv4, CgroupID: id, Dir: dir, Stuck: true, AgeKnown: true,
		LocalAddr: netip.MustParseAddr("10.0.0.1"), RemoteAddr: netip.MustParseAddr("10.0.0.2"),
		LocalPort: local, RemotePort: remote, Owners: owners,
	}
}

// TestHoldersAndExhaustion: holders by stuck sockets, bounded, with their
// descriptors from /proc; the exhaustion forecast of the one closest to
// its limit at the row's growth.
func TestHoldersAndExhaustion(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, 1234, 100, 160) // 60 left
	fakeProc(t, root, 5678, 50, 1024) // 974 left
	fakeProc(t, root, 9999, 10, 20)   // 10 left, but not shown: MaxHolders
	src, clk := newFakeSource(), newFakeClock()
	var socks fakeSockets
	for i := range 3 {
		socks = append(socks, stuckSocket(101, 8080, uint16(40000+i), events.DirInbound, owner(1234, "api", 10+i), owner(1234, "api", 20+i)))
	}
	socks = append(socks,
		stuckSocket(101, 8080, 41000, events.DirInbound, owner(5678, "sidecar", 7)),
		stuckSocket(101, 8080, 41001, events.DirInbound, owner(5678, "sidecar", 8)),
		stuckSocket(101, 8080, 41002, events.DirInbound, owner(9999, "cron", 3)),
		stuckSocket(101, 8080, 41003, events.DirInbound),
	)
	notStuck := stuckSocket(101, 8080, 41004, events.DirInbound, owner(9999, "cron", 4))
	notStuck.Stuck = false
	socks = append(socks, notStuck)
	b := NewBuilder(Config{Now: clk.Now, ProcRoot: root, MaxHolders: 2}, src, socks, names, nil)

	// Growing by 30 a minute, exactly.
	for i := range 61 {
		src.update(keyAPI, func(a *events.Aggregate) { a.Entered = uint64(i / 2) })
		b.Sample()
		clk.add(time.Second)
	}
	clk.add(-time.Second)
	rep := mustReport(t, b)
	r, ok := findRow(rep, rowOfAPI, 8080, events.DirInbound)
	if !ok {
		t.Fatalf("no api row: %+v", rep.Rows)
	}
	if r.Stuck != 7 {
		t.Errorf("stuck %d, want 7", r.Stuck)
	}
	want := []Holder{{PID: 1234, Comm: "api", OpenFDs: 100, FDLimit: 160}, {PID: 5678, Comm: "sidecar", OpenFDs: 50, FDLimit: 1024}}
	if !slices.Equal(r.Holders, want) {
		t.Errorf("holders %+v, want %+v", r.Holders, want)
	}
	if r.GrowthPerMinute != 30 {
		t.Fatalf("growth %v/min, want 30", r.GrowthPerMinute)
	}
	if r.ExhaustionNever || r.Exhaustion != 2*time.Minute {
		t.Errorf("exhaustion %v (never %v), want 2m: 60 descriptors left at 30 a minute", r.Exhaustion, r.ExhaustionNever)
	}

	// The descriptor counts are cached for a second.
	os.Remove(filepath.Join(root, "1234", "fd", "0"))
	if r := mustReport(t, b).Rows[0]; r.Holders[0].OpenFDs != 100 {
		t.Errorf("open descriptors read again within a second: %d", r.Holders[0].OpenFDs)
	}
	clk.add(time.Second)
	if r := mustReport(t, b).Rows[0]; r.Holders[0].OpenFDs != 99 {
		t.Errorf("open descriptors %d a second later, want 99", r.Holders[0].OpenFDs)
	}
}

// A holder whose accept() failed with EMFILE has run out: the row says
// exhausted whatever the forecast; ENFILE (the system's table) and other
// processes' failures do not count against the row.
func TestExhaustedHolder(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, 1234, 32, 32)
	fakeProc(t, root, 5678, 10, 1024)
	src, clk := newFakeSource(), newFakeClock()
	socks := fakeSockets{
		stuckSocket(101, 8080, 40000, events.DirInbound, owner(1234, "api", 10)),
		stuckSocket(101, 8080, 40001, events.DirInbound, owner(5678, "sidecar", 7)),
	}
	b := NewBuilder(Config{Now: clk.Now, ProcRoot: root}, src, socks, names, nil)
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered = 2 })
	row := func() Row {
		t.Helper()
		r, ok := findRow(mustReport(t, b), rowOfAPI, 8080, events.DirInbound)
		if !ok {
			t.Fatal("no api row")
		}
		return r
	}
	if r := row(); r.Exhausted || !r.ExhaustionNever {
		t.Errorf("before any failure: exhausted %v, never %v", r.Exhausted, r.ExhaustionNever)
	}
	src.mu.Lock()
	src.accepts = []events.AcceptFailure{
		{PID: 5678, Port: 9000, Reason: "enfile", Count: 4},
		{PID: 4242, Port: 8080, Reason: "emfile", Count: 9},
	}
	src.mu.Unlock()
	if r := row(); r.Exhausted {
		t.Errorf("exhausted by another process's EMFILE or a holder's ENFILE: %+v", r)
	}
	src.mu.Lock()
	src.accepts = append(src.accepts, events.AcceptFailure{PID: 1234, Port: 8080, Reason: "emfile", Count: 3},
		events.AcceptFailure{PID: 1234, Port: 8081, Reason: "emfile", Count: 2})
	src.mu.Unlock()
	r := row()
	if !r.Exhausted || r.ExhaustionNever || r.Exhaustion != 0 {
		t.Errorf("exhausted %v, never %v, in %v: want exhausted", r.Exhausted, r.ExhaustionNever, r.Exhaustion)
	}
	for _, h := range r.Holders {
		if want := map[int]uint64{1234: 5}[h.PID]; h.AcceptFailures != want {
			t.Errorf("holder %d: %d accept failures, want %d", h.PID, h.AcceptFailures, want)
		}
	}
}

func TestExhaustion(t *testing.T) {
	h := func(open, limit int) Holder { return Holder{PID: 1, OpenFDs: open, FDLimit: limit} }
	for _, c := range []struct {
		name    string
		holders []Holder
		growth  float64
		want    time.Duration
		never   bool
	}{
		{"no holder", nil, 10, 0, true},
		{"unknown use", []Holder{h(0, 0), h(5, 0)}, 10, 0, true},
		{"not growing", []Holder{h(10, 100)}, 0, 0, true},
		{"shrinking", []Holder{h(10, 100)}, -5, 0, true},
		{"closest to its limit", []Holder{h(900, 1024), h(10, 200)}, 62, 2 * time.Minute, false},
		{"at its limit", []Holder{h(1024, 1024)}, 1, 0, false},
		{"over its limit", []Holder{h(2000, 1024)}, 1, 0, false},
		{"half a minute", []Holder{h(70, 100)}, 60, 30 * time.Second, false},
		{"too slow to tell", []Holder{h(1, 1<<30)}, 1e-300, 0, true},
	} {
		got, never := exhaustion(c.holders, c.growth)
		if got != c.want || never != c.never {
			t.Errorf("%s: %v never=%v, want %v never=%v", c.name, got, never, c.want, c.never)
		}
	}
}

// TestHistoryBounded: History keeps the last History samples, and the rate
// samples stay bounded however often Sample runs.
func TestHistoryBounded(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	b := NewBuilder(Config{Now: clk.Now, History: 5}, src, nil, names, nil)
	for i := range 1000 {
		src.update(keyAPI, func(a *events.Aggregate) { a.Entered = uint64(i) })
		if err := b.Sample(); err != nil {
			t.Fatal(err)
		}
		clk.add(100 * time.Millisecond)
	}
	clk.add(-100 * time.Millisecond)
	rep := mustReport(t, b)
	if want := []uint64{995, 996, 997, 998, 999}; !slices.Equal(rep.Rows[0].History, want) {
		t.Errorf("history %v, want %v", rep.Rows[0].History, want)
	}
	if r := rep.Rows[0]; !within(r.NewPerMinute, 600, 0.05) {
		t.Errorf("%v new a minute, want 600", r.NewPerMinute)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.rows {
		if len(r.rates) > rateSteps+2 || len(r.history) > 5 {
			t.Errorf("%d rate samples, %d history samples", len(r.rates), len(r.history))
		}
	}
}

// TestForget: a key gone from the kernel is forgotten after the window; a
// row whose keys are all gone is dropped.
func TestForget(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	b := NewBuilder(Config{Now: clk.Now}, src, nil, names, nil)
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered = 1 })
	b.Sample()
	src.mu.Lock()
	delete(src.aggs, keyAPI)
	src.mu.Unlock()
	for range 60 {
		clk.add(time.Second)
		b.Sample()
	}
	b.mu.Lock()
	rows, keys := len(b.rows), len(b.keys)
	b.mu.Unlock()
	if rows != 1 || keys != 0 {
		t.Errorf("%d rows and %d keys after 60 s", rows, keys)
	}
	clk.add(time.Second)
	b.Sample()
	b.mu.Lock()
	rows = len(b.rows)
	b.mu.Unlock()
	if rows != 0 {
		t.Errorf("%d rows kept past the window", rows)
	}
	if rep := mustReport(t, b); len(rep.Rows) != 0 {
		t.Errorf("rows %+v", rep.Rows)
	}
}

// TestMerge: cgroups with the same names are one row (a container that
// restarted: its new cgroup counts from 0 while the old one's counts go
// away) and the rates never go negative.
func TestMerge(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	old := events.AggregateKey{CgroupID: 11, Port: 8080, Dir: events.DirInbound}
	cur := events.AggregateKey{CgroupID: 12, Port: 8080, Dir: events.DirInbound}
	other := events.AggregateKey{CgroupID: 13, Port: 9090, Dir: events.DirInbound} // same names, another port
	w := metrics.Workload{Namespace: "shop", Pod: "api-1", Container: "api"}
	socks := fakeSockets{
		stuckSocket(11, 8080, 40000, events.DirInbound, owner(1, "old", 3)),
		stuckSocket(12, 8080, 40001, events.DirInbound, owner(2, "new", 3)),
		stuckSocket(12, 8080, 40002, events.DirInbound, owner(2, "new", 4)),
		stuckSocket(13, 9090, 40003, events.DirInbound),
	}
	b := NewBuilder(Config{Now: clk.Now, ProcRoot: t.TempDir()}, src, socks, fakeNamer{11: w, 12: w, 13: w}, nil)
	start := clk.Now()
	src.update(old, func(a *events.Aggregate) { a.Entered, a.Closed = 100, 95; a.Hist[4] = 95 })
	src.update(other, func(a *events.Aggregate) { a.Entered = 1 })
	b.Sample()
	for i := 1; i <= 30; i++ {
		clk.add(time.Second)
		if i == 10 { // the restart: the old cgroup's aggregate is deleted
			src.mu.Lock()
			delete(src.aggs, old)
			src.mu.Unlock()
		}
		if i >= 10 {
			src.update(cur, func(a *events.Aggregate) { a.Entered = uint64(i - 9) })
		}
		b.Sample()
	}
	// The old cgroup's key is back (its socket, still in CLOSE-WAIT).
	src.update(old, func(a *events.Aggregate) { a.Entered = 1; a.Hist[4] = 0 })
	src.mu.Lock()
	src.table = []events.Event{
		{Time: start.Add(-time.Hour), CgroupID: 11, Dir: events.DirInbound, LocalPort: 8080, RemotePort: 40000, AgeKnown: false},
		{Time: start.Add(5 * time.Second), CgroupID: 12, Dir: events.DirInbound, LocalPort: 8080, RemotePort: 40001, AgeKnown: true},
	}
	src.mu.Unlock()
	rep := mustReport(t, b)
	if len(rep.Rows) != 2 {
		t.Fatalf("rows %+v", rep.Rows)
	}
	r, ok := findRow(rep, Workload{Namespace: "shop", Pod: "api-1", Container: "api"}, 8080, events.DirInbound)
	if !ok {
		t.Fatalf("no merged row: %+v", rep.Rows)
	}
	if r.InCloseWait != 22 || r.Stuck != 3 || r.CgroupID != 12 {
		t.Errorf("merged row: %d in CLOSE-WAIT, %d stuck, cgroup %d; want 22, 3, 12 (the one with most)", r.InCloseWait, r.Stuck, r.CgroupID)
	}
	// 21 entered in the last 21 s; the deleted aggregate's 5 never count
	// as negative growth.
	if !within(r.NewPerMinute, 21.0/30*60, 0.01) || r.GrowthPerMinute < 0 {
		t.Errorf("merged rates: %+v", r)
	}
	if r.OldestAge != time.Hour+30*time.Second || r.OldestAgeKnown {
		t.Errorf("oldest %v known %v, want 1h30s not known", r.OldestAge, r.OldestAgeKnown)
	}
	if len(r.Holders) != 2 || r.Holders[0].PID != 2 || r.Holders[1].PID != 1 {
		t.Errorf("holders %+v", r.Holders)
	}
	if len(r.History) != 31 {
		t.Errorf("history %v", r.History)
	}
}

// TestOverflow: the kernel's overflow key is the row "other", which also
// gets the sockets of keys that overflowed.
func TestOverflow(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	ov := events.AggregateKey{Dir: events.DirOverflow}
	src.update(ov, func(a *events.Aggregate) { a.Entered, a.Closed = 40, 10; a.Hist[12] = 10 })
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered = 2 })
	src.table = []events.Event{
		{Time: clk.Now().Add(-time.Minute), CgroupID: 777, Dir: events.DirOutbound, LocalPort: 50000, RemotePort: 443, AgeKnown: true},
	}
	socks := fakeSockets{
		stuckSocket(777, 50000, 443, events.DirOutbound, owner(42, "crawler", 5)),
		stuckSocket(101, 8080, 40000, events.DirInbound),
	}
	b := NewBuilder(Config{Now: clk.Now, ProcRoot: t.TempDir()}, src, socks, names, nil)
	rep := mustReport(t, b)
	o, ok := findRow(rep, Overflow, 0, events.DirOverflow)
	if !ok {
		t.Fatalf("no overflow row: %+v", rep.Rows)
	}
	if o.Direction != "other" || o.Workload.Cgroup != "other" || o.CgroupID != 0 {
		t.Errorf("overflow row %+v", o)
	}
	if o.InCloseWait != 30 || o.Stuck != 1 || o.Closes != 10 || o.OldestAge != time.Minute || !o.OldestAgeKnown {
		t.Errorf("overflow row %+v", o)
	}
	if len(o.Holders) != 1 || o.Holders[0].Comm != "crawler" {
		t.Errorf("overflow holders %+v", o.Holders)
	}
	if len(rep.Rows) != 2 || rep.Rows[0].Workload != Overflow {
		t.Errorf("rows %+v, want other (30 in CLOSE-WAIT) first", rep.Rows)
	}

	// Without an overflow key, a socket of a key with no aggregate gets
	// its own row.
	src.mu.Lock()
	delete(src.aggs, ov)
	src.mu.Unlock()
	rep = mustReport(t, b)
	r, ok := findRow(rep, Workload{Cgroup: "/cgroup-777"}, 443, events.DirOutbound)
	if !ok || r.Stuck != 1 || r.CgroupID != 777 || r.InCloseWait != 0 {
		t.Errorf("row of a key without an aggregate: %+v (found %v) in %+v", r, ok, rep.Rows)
	}
}

// TestIdle: rows with nothing in CLOSE-WAIT and nothing in the window are
// left out; activity in the window or a socket in CLOSE-WAIT keeps one.
func TestIdle(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	idle := events.AggregateKey{CgroupID: 303, Port: 22, Dir: events.DirInbound}
	churn := events.AggregateKey{CgroupID: 404, Port: 80, Dir: events.DirInbound}
	src.update(idle, func(a *events.Aggregate) { a.Entered, a.Closed, a.Hist[5] = 5, 5, 5 })
	src.update(churn, func(a *events.Aggregate) { a.Entered, a.Closed = 5, 5 })
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered = 1 })
	b := NewBuilder(Config{Now: clk.Now}, src, nil, names, nil)
	b.Sample()
	clk.add(time.Second)
	src.update(churn, func(a *events.Aggregate) { a.Entered, a.Closed = 6, 6 })
	b.Sample()
	rep := mustReport(t, b)
	var got []uint64
	for _, r := range rep.Rows {
		got = append(got, r.CgroupID)
	}
	if !slices.Equal(got, []uint64{101, 404}) {
		t.Errorf("rows of cgroups %v, want 101 (in CLOSE-WAIT) then 404 (closes)", got)
	}
	// A minute later the churn is out of the window.
	for range 61 {
		clk.add(time.Second)
		b.Sample()
	}
	rep = mustReport(t, b)
	if len(rep.Rows) != 1 || rep.Rows[0].CgroupID != 101 {
		t.Errorf("rows %+v", rep.Rows)
	}
}

// TestDiagnosis: the stuck sockets' receive state, counted.
func TestDiagnosis(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered = 6 })
	socks := fakeSockets{}
	for _, d := range []struct{ known, eof, unread, stuck bool }{
		{true, true, false, true},
		{true, true, false, true},
		{true, false, true, true},
		{true, false, false, true},
		{false, false, false, true},
		{true, true, false, false}, // not stuck yet
	} {
		s := stuckSocket(101, 8080, 40000, events.DirInbound)
		s.DiagKnown, s.ReadEOF, s.UnreadData, s.Stuck = d.known, d.eof, d.unread, d.stuck
		socks = append(socks, s)
	}
	b := NewBuilder(Config{Now: clk.Now}, src, socks, names, nil)
	r := mustReport(t, b).Rows[0]
	if r.Stuck != 5 || r.ReadEOF != 2 || r.NeverRead != 2 || r.UnreadData != 1 {
		t.Errorf("stuck %d, read EOF %d, never read %d, unread data %d; want 5, 2, 2, 1", r.Stuck, r.ReadEOF, r.NeverRead, r.UnreadData)
	}
}

// TestStuckFromTable: without the tracker, the table's sockets past the
// threshold are the stuck ones.
func TestStuckFromTable(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	src.update(keyDB, func(a *events.Aggregate) { a.Entered = 3 })
	now := clk.Now()
	for _, age := range []time.Duration{time.Second, time.Minute, time.Hour} {
		src.table = append(src.table, events.Event{Time: now.Add(-age), CgroupID: 202, Dir: events.DirOutbound, LocalPort: 50000, RemotePort: 5432, AgeKnown: true})
	}
	b := NewBuilder(Config{Now: clk.Now, Threshold: 30 * time.Second}, src, nil, names, nil)
	r := mustReport(t, b).Rows[0]
	if r.Stuck != 2 || r.OldestAge != time.Hour || !r.OldestAgeKnown || r.Holders == nil || len(r.Holders) != 0 {
		t.Errorf("row %+v", r)
	}
}

// TestNoNamer: without a Namer, rows are by cgroup id.
func TestNoNamer(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered = 1 })
	src.update(events.AggregateKey{CgroupID: 102, Port: 8080, Dir: events.DirInbound}, func(a *events.Aggregate) { a.Entered = 2 })
	b := NewBuilder(Config{Now: clk.Now}, src, nil, nil, nil)
	rep := mustReport(t, b)
	if len(rep.Rows) != 2 || rep.Rows[0].CgroupID != 102 || rep.Rows[1].CgroupID != 101 {
		t.Errorf("rows %+v", rep.Rows)
	}
}

// TestPeers: the peers, FIN_WAIT2 first, bounded; a failing listing goes
// to Warn, with what it found, and the report is still made.
func TestPeers(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	listed := PeersOf([]tracer.PeerSockets{
		{NetNS: 1, Remote: netip.MustParseAddrPort("10.0.0.9:443"), TimeWait: 50},
		{NetNS: 1, Remote: netip.MustParseAddrPort("[fd00::1]:8080"), FinWait2: 3, OldestFinWait2: time.Minute},
		{NetNS: 2, Remote: netip.MustParseAddrPort("10.0.0.8:80"), FinWait2: 7, TimeWait: 1},
	})
	if listed[1].Addr != "[fd00::1]:8080" || listed[1].NetNS != 1 || listed[1].FinWait2 != 3 || listed[1].OldestFinWait2 != time.Minute {
		t.Errorf("converted %+v", listed[1])
	}
	listErr := errors.New("network namespace 5: setns: operation not permitted")
	var warned []error
	b := NewBuilder(Config{Now: clk.Now, MaxPeers: 2, Warn: func(err error) { warned = append(warned, err) }}, src, nil, names,
		func() ([]Peer, error) { return slices.Clone(listed), listErr })
	rep, err := b.Report()
	if err != nil {
		t.Fatal(err)
	}
	want := []Peer{listed[2], listed[1]}
	if !slices.Equal(rep.Peers, want) {
		t.Errorf("peers %+v, want %+v", rep.Peers, want)
	}
	if len(warned) != 1 || !errors.Is(warned[0], listErr) {
		t.Errorf("warned %v", warned)
	}

	// Without a lister, or without anything: empty lists, not null.
	b = NewBuilder(Config{Now: clk.Now}, src, nil, names, nil)
	rep = mustReport(t, b)
	if rep.Peers == nil || rep.Rows == nil {
		t.Errorf("nil lists: %#v", rep)
	}
}

// TestErrors: without aggregates there is no report; without the table,
// a report without ages and a warning.
func TestErrors(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	src.update(keyAPI, func(a *events.Aggregate) { a.Entered = 1 })
	var warned []error
	b := NewBuilder(Config{Now: clk.Now, Warn: func(err error) { warned = append(warned, err) }}, src, nil, names, nil)
	src.tableErr = errors.New("table gone")
	rep, err := b.Report()
	if err != nil || len(rep.Rows) != 1 || len(warned) != 1 || !errors.Is(warned[0], src.tableErr) {
		t.Errorf("report %+v, error %v, warned %v", rep, err, warned)
	}
	src.aggErr = errors.New("map gone")
	if _, err := b.Report(); !errors.Is(err, src.aggErr) {
		t.Errorf("report without aggregates: %v", err)
	}
	if err := b.Sample(); !errors.Is(err, src.aggErr) {
		t.Errorf("sample without aggregates: %v", err)
	}
}

// TestConcurrent: Sample and Report from several goroutines (run with
// -race).
func TestConcurrent(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	socks := fakeSockets{stuckSocket(101, 8080, 40000, events.DirInbound, owner(os.Getpid(), "test", 3))}
	b := NewBuilder(Config{Now: clk.Now}, src, socks, names, func() ([]Peer, error) { return nil, nil })
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				if g%2 == 0 {
					src.update(keyAPI, func(a *events.Aggregate) { a.Entered++ })
					clk.add(time.Millisecond)
					if err := b.Sample(); err != nil {
						t.Error(err)
					}
				} else if _, err := b.Report(); err != nil {
					t.Error(err)
				}
				_ = i
			}
		})
	}
	wg.Wait()
	r := mustReport(t, b).Rows[0]
	if r.InCloseWait != 400 || r.Holders[0].OpenFDs == 0 || r.Holders[0].FDLimit == 0 {
		t.Errorf("row %+v", r)
	}
}

// Listeners in the report: those with connections waiting or dropping,
// the fastest dropping first, with their drops per minute over the
// window; an idle listener is left out, and past the bound counted.
func TestListenersInReport(t *testing.T) {
	src, clk := newFakeSource(), newFakeClock()
	ap := netip.MustParseAddrPort
	var drops uint64
	list := func() (map[uint32][]events.Listener, error) {
		return map[uint32][]events.Listener{7: {
			{Local: ap("0.0.0.0:5984"), Inode: 1, CgroupID: 101, Queue: 129, Backlog: 128, Drops: drops},
			{Local: ap("127.0.0.1:9000"), Inode: 2, CgroupID: 101, Queue: 3, Backlog: 4096},
			{Local: ap("[::]:22"), Inode: 3, Queue: 0, Backlog: 128, Drops: 50}, // idle: old drops only
		}}, nil
	}
	b := NewBuilder(Config{Now: clk.Now, Listeners: list}, src, nil, names, nil)
	for i := range 31 {
		drops = uint64(100 + 2*i) // 2 a second: 120 a minute
		b.Sample()
		clk.add(time.Second)
	}
	clk.add(-time.Second)
	rep := mustReport(t, b)
	if len(rep.Listeners) != 2 || rep.ListenersOmitted != 0 {
		t.Fatalf("listeners %+v, want the dropping and the queued ones", rep.Listeners)
	}
	l := rep.Listeners[0]
	if l.Addr != "0.0.0.0:5984" || l.NetNS != 7 || l.Queue != 129 || l.Limit != 128 || l.Drops != 160 ||
		math.Abs(l.DropsPerMinute-120) > 0.01 || l.Workload != rowOfAPI {
		t.Errorf("first listener %+v, want 0.0.0.0:5984 dropping 120/min, of the api workload", l)
	}
	if q := rep.Listeners[1]; q.Addr != "127.0.0.1:9000" || q.Queue != 3 || q.DropsPerMinute != 0 {
		t.Errorf("second listener %+v", q)
	}
	b = NewBuilder(Config{Now: clk.Now, Listeners: list, MaxListeners: 1}, src, nil, names, nil)
	if rep := mustReport(t, b); len(rep.Listeners) != 1 || rep.ListenersOmitted != 1 {
		t.Errorf("bounded to 1: %+v, %d omitted", rep.Listeners, rep.ListenersOmitted)
	}
}
