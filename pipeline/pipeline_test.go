package pipeline

import (
	"context"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/track"
)

// fakeSource stands in for the tracer: the test feeds records and
// progress marks, and sets what the kernel's CLOSE-WAIT table holds.
type fakeSource struct {
	ch       chan []events.Event
	stopOnce sync.Once
	clock    bootclock.Clock

	mu       sync.Mutex
	table    map[uint64]events.Event // the kernel's CLOSE-WAIT table, by sock
	snapshot []events.Event
	lost     events.LostCounts
	aggs     []events.Aggregate
	stopped  bool
}

func newFakeSource() *fakeSource {
	return &fakeSource{ch: make(chan []events.Event, 1024), clock: bootclock.New(), table: make(map[uint64]events.Event)}
}

func (f *fakeSource) Events() <-chan []events.Event { return f.ch }
func (f *fakeSource) Recycle([]events.Event)        {}
func (f *fakeSource) Stop() {
	f.stopOnce.Do(func() {
		f.mu.Lock()
		f.stopped = true
		f.mu.Unlock()
		close(f.ch)
	})
}
func (f *fakeSource) Err() error             { return nil }
func (f *fakeSource) Clock() bootclock.Clock { return f.clock }
func (f *fakeSource) Lost() (events.LostCounts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lost, nil
}

func (f *fakeSource) ScanCloseWait(dueBoot int64, known func(uint64) bool, due func(*events.Event)) (int, error) {
	f.mu.Lock()
	var list []events.Event
	for _, ev := range f.table {
		if ev.FinBootNS <= dueBoot && (known == nil || !known(ev.Sock)) {
			list = append(list, ev)
		}
	}
	n := len(f.table)
	f.mu.Unlock()
	for i := range list {
		due(&list[i])
	}
	return n, nil
}

func (f *fakeSource) ListCloseWait(each func(uint64)) error {
	f.mu.Lock()
	var socks []uint64
	for sock := range f.table {
		socks = append(socks, sock)
	}
	f.mu.Unlock()
	for _, sock := range socks {
		each(sock)
	}
	return nil
}

func (f *fakeSource) InCloseWait(ev *events.Event) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.table[ev.Sock]
	return ok && e.FinBootNS == ev.FinBootNS, nil
}

func (f *fakeSource) Snapshot(found func(*events.Event)) error {
	for i := range f.snapshot {
		ev := f.snapshot[i]
		found(&ev)
	}
	return nil
}

func (f *fakeSource) Inodes(uint32) (map[uint64]uint64, error) { return nil, nil }

// Aggregates gives the configured aggregates, and one that counts the
// sockets in the table as in CLOSE-WAIT, as the kernel's do.
func (f *fakeSource) Aggregates(fn func(*events.Aggregate)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.aggs {
		a := f.aggs[i]
		fn(&a)
	}
	if len(f.table) > 0 {
		fn(&events.Aggregate{AggregateKey: events.AggregateKey{Port: 5984, Dir: events.DirInbound}, Entered: uint64(len(f.table))})
	}
	return nil
}

// send delivers records in one batch, as the reader does.
func (f *fakeSource) send(evs ...events.Event) { f.ch <- evs }

// progress says every record before now has been delivered.
func (f *fakeSource) progress() {
	f.send(events.Event{Kind: events.KindProgress, BootNS: bootclock.Now()})
}

// closeSocket removes a socket from the kernel table, as the kernel does
// before it sends the close.
func (f *fakeSource) closeSocket(sock uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.table, sock)
}

func (f *fakeSource) put(ev events.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.table[ev.Sock] = ev
}

// fakeAttr names owners by inode; busy makes Owners ask for a retry that
// many times first, as a spent scan budget does.
type fakeAttr struct {
	mu     sync.Mutex
	owners map[uint64]*events.Process
	busy   int
	calls  int
}

func (a *fakeAttr) Socket(*events.Event)       {}
func (a *fakeAttr) CachedOwners(*events.Event) {}
func (a *fakeAttr) Closed(*events.Event)       {}
func (a *fakeAttr) Owners(ev *events.Event) time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	ev.Owners, ev.OwnerSource = nil, events.OwnerUnresolved
	if a.busy > 0 {
		a.busy--
		return 20 * time.Millisecond
	}
	if p, ok := a.owners[ev.Inode]; ok {
		ev.Owners, ev.OwnerSource = []events.Owner{{Process: p, FD: 3}}, events.OwnerProc
	}
	return 0
}

// waitTimeout bounds every wait for a condition: the condition ends it,
// so it is no margin a verdict depends on; generous, for a loaded machine.
const waitTimeout = 60 * time.Second

// recorder is a sink that keeps what it is given.
type recorder struct {
	mu      sync.Mutex
	evs     []events.Event
	status  []Status
	err     error         // returned by Write
	block   chan struct{} // Write waits for it to close
	blocked chan struct{} // gets a value each time Write waits on block
}

func (r *recorder) Write(ev *events.Event) error {
	if r.block != nil {
		select {
		case r.blocked <- struct{}{}: // nil: never
		default:
		}
		<-r.block
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	r.evs = append(r.evs, *ev)
	return nil
}
func (r *recorder) Flush() error { return nil }
func (r *recorder) WriteStatus(st *Status) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = append(r.status, *st)
	return nil
}

func (r *recorder) events() []events.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]events.Event(nil), r.evs...)
}

func (r *recorder) waitFor(t *testing.T, what string, match func(events.Event) bool) events.Event {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		for _, ev := range r.events() {
			if match(ev) {
				return ev
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %s; got %v", what, kinds(r.events()))
	return events.Event{}
}

func kinds(evs []events.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Kind.String())
	}
	return out
}

const threshold = 200 * time.Millisecond

// socket is a close_wait event of a socket in the kernel table whose FIN
// came age ago.
func socket(sock uint64, age time.Duration) events.Event {
	fin := bootclock.Now() - age.Nanoseconds()
	return events.Event{
		Kind: events.KindCloseWait, Sock: sock, Key: sock, Inode: 1000 + sock, FinBootNS: fin, BootNS: fin,
		Family: events.FamilyIPv4, LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: 5984,
		RemoteAddr: netip.MustParseAddr("10.0.0.2"), RemotePort: 40000, AgeKnown: true, KernelTracked: true,
	}
}

// closeOf is the record of the application closing sock, FIN at fin.
func closeOf(sock uint64, fin int64) events.Event {
	now := bootclock.Now()
	return events.Event{Kind: events.KindAppClose, Sock: sock, BootNS: now, FinBootNS: fin, AgeNS: now - fin, AgeKnown: true,
		NewState: events.StateLastAck, Family: events.FamilyIPv4, LocalAddr: netip.MustParseAddr("10.0.0.1"),
		RemoteAddr: netip.MustParseAddr("10.0.0.2")}
}

type harness struct {
	src    *fakeSource
	attr   *fakeAttr
	out    *recorder
	p      *Pipeline
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg Config, sel Selection, prep func(h *harness)) *harness {
	t.Helper()
	cfg.CloseWait = true
	if cfg.Track.Threshold == 0 {
		cfg.Track = track.Config{Threshold: threshold, MaxSockets: 100, MaxOwnerWait: DefaultMaxOwnerWait}
	}
	h := &harness{src: newFakeSource(), attr: &fakeAttr{owners: make(map[uint64]*events.Process)}, out: &recorder{}, done: make(chan error, 1)}
	if prep != nil {
		prep(h)
	}
	h.p = New(cfg, h.src, h.attr, Filter(sel, h.out))
	if _, err := h.p.Snapshot(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.p.Run(ctx) }()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop ends the run as a signal does and returns its error.
func (h *harness) stop(t *testing.T) error {
	t.Helper()
	h.cancel()
	select {
	case err, ok := <-h.done:
		if ok {
			close(h.done)
		}
		return err
	case <-time.After(waitTimeout):
		t.Fatal("pipeline did not stop")
		return nil
	}
}

// ticker sends a progress mark every 10ms until the test ends.
func (h *harness) ticker(t *testing.T) {
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				h.src.mu.Lock()
				stopped := h.src.stopped
				h.src.mu.Unlock()
				if stopped {
					return
				}
				h.src.progress()
			}
		}
	}()
}

// A socket the table scan finds past the threshold is reported stuck with
// its owner, and its later close is written as its resolution.
func TestStuckFromTableThenResolution(t *testing.T) {
	h := start(t, Config{}, Selection{}, func(h *harness) {
		h.src.put(socket(1, 2*threshold))
		h.src.put(socket(2, 0)) // not due yet
		h.attr.owners[1001] = &events.Process{PID: 42, Comm: "couchdb"}
	})
	h.ticker(t)
	st := h.out.waitFor(t, "stuck", func(ev events.Event) bool { return ev.Kind == events.KindStuck })
	if st.Sock != 1 || len(st.Owners) != 1 || st.Owners[0].PID != 42 || st.AgeNS < (2*threshold).Nanoseconds() {
		t.Errorf("stuck = %+v, want sock 1 held by 42, at least 400ms old", st)
	}
	fin := h.src.table[1].FinBootNS
	h.src.closeSocket(1)
	h.src.send(closeOf(1, fin))
	ac := h.out.waitFor(t, "app_close", func(ev events.Event) bool { return ev.Kind == events.KindAppClose })
	if ac.Sock != 1 || !ac.WasStuck || ac.OwnerSource != events.OwnerLastSeen || ac.Owners[0].PID != 42 {
		t.Errorf("app_close = %+v, want sock 1, was_stuck, last seen owner 42", ac)
	}
	// Sock 2 gets its report once it is past the threshold.
	st2 := h.out.waitFor(t, "stuck of sock 2", func(ev events.Event) bool { return ev.Kind == events.KindStuck && ev.Sock == 2 })
	if st2.AgeNS < threshold.Nanoseconds() {
		t.Errorf("sock 2 reported at age %v, before the %v threshold", time.Duration(st2.AgeNS), threshold)
	}
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if n := len(h.out.events()); n != 3 {
		t.Errorf("wrote %v, want stuck, app_close, stuck", kinds(h.out.events()))
	}
	if h.p.Tracker().Stuck() != 1 || h.p.Tracker().Len() != 1 {
		t.Errorf("tracker: %d stuck of %d, want 1 of 1", h.p.Tracker().Stuck(), h.p.Tracker().Len())
	}
}

// A socket that closed after the table scan saw it, its close still on
// the way, is never reported stuck: the report waits for the progress
// mark, by which the close has been handled, and checks the table first.
func TestStuckNeverOvertakesClose(t *testing.T) {
	for _, order := range []string{"close first", "progress first"} {
		t.Run(order, func(t *testing.T) {
			h := start(t, Config{}, Selection{}, func(h *harness) { h.src.put(socket(1, 2*threshold)) })
			// The initial scan has adopted sock 1 before any record is read.
			fin := h.src.table[1].FinBootNS
			h.src.closeSocket(1) // the kernel deletes the entry before it sends the close
			if order == "close first" {
				h.src.send(closeOf(1, fin))
				h.src.progress()
			} else {
				h.src.progress()
				h.src.send(closeOf(1, fin))
			}
			h.src.progress()
			time.Sleep(50 * time.Millisecond)
			if err := h.stop(t); err != nil {
				t.Fatal(err)
			}
			for _, ev := range h.out.events() {
				t.Errorf("wrote %s for a socket that closed before its report: %+v", ev.Kind, ev)
			}
			if h.p.Tracker().Len() != 0 {
				t.Errorf("%d sockets still tracked", h.p.Tracker().Len())
			}
		})
	}
}

// When the scan budget allows no /proc scan yet, the first report waits
// for it instead of going out unresolved; past MaxOwnerWait it goes out.
func TestStuckWaitsForOwner(t *testing.T) {
	h := start(t, Config{}, Selection{}, func(h *harness) {
		h.src.put(socket(1, 2*threshold))
		h.attr.owners[1001] = &events.Process{PID: 7, Comm: "server"}
		h.attr.busy = 3
	})
	h.ticker(t)
	st := h.out.waitFor(t, "stuck", func(ev events.Event) bool { return ev.Kind == events.KindStuck })
	if len(st.Owners) != 1 || st.Owners[0].PID != 7 || h.attr.calls != 4 || h.p.Tracker().Deferred() != 3 {
		t.Errorf("stuck owners %+v after %d lookups, %d held back; want owner 7 after 4, 3", st.Owners, h.attr.calls, h.p.Tracker().Deferred())
	}

	// Never resolvable in time: out it goes, unresolved, after the bound.
	cfg := Config{Track: track.Config{Threshold: threshold, MaxSockets: 10, MaxOwnerWait: 100 * time.Millisecond}}
	h2 := start(t, cfg, Selection{}, func(h *harness) {
		h.src.put(socket(1, threshold))
		h.attr.busy = 1 << 30
	})
	h2.ticker(t)
	// It comes at all (the owner never resolves): the bound works. How
	// soon after the bound is track's TestStuckHeldBackForOwner, on a
	// clock of its own.
	st = h2.out.waitFor(t, "unresolved stuck", func(ev events.Event) bool { return ev.Kind == events.KindStuck })
	if st.OwnerSource != events.OwnerUnresolved {
		t.Errorf("stuck %+v, want unresolved past the 100ms bound", st)
	}
}

// Sockets found at start-up: with EverySocket each is written as a
// close_wait of unknown age; by default nothing is written until the table
// scan finds them due, except that a socket with no room in the kernel
// table is tracked in user space at once.
func TestSnapshotAdoption(t *testing.T) {
	old := socket(1, 0)
	old.AgeKnown = false
	untracked := socket(2, threshold)
	untracked.KernelTracked, untracked.AgeKnown = false, false

	h := start(t, Config{EverySocket: true}, Selection{EverySocket: true}, func(h *harness) {
		h.src.snapshot = []events.Event{old, untracked}
	})
	cw := h.out.waitFor(t, "close_wait", func(ev events.Event) bool { return ev.Kind == events.KindCloseWait })
	if cw.AgeKnown {
		t.Errorf("snapshot close_wait %+v, want age_known false", cw)
	}
	if got := len(h.out.events()); got != 2 {
		t.Errorf("wrote %v, want two close_wait", kinds(h.out.events()))
	}

	h = start(t, Config{}, Selection{}, func(h *harness) {
		h.src.snapshot = []events.Event{old, untracked}
	})
	if h.p.Tracker().Len() != 1 || !h.p.Tracker().Has(2) {
		t.Errorf("quiet mode tracks %d sockets after the snapshot, want only the untracked one", h.p.Tracker().Len())
	}
	h.ticker(t)
	h.out.waitFor(t, "stuck of the untracked socket", func(ev events.Event) bool { return ev.Kind == events.KindStuck && ev.Sock == 2 })
	for _, ev := range h.out.events() {
		if ev.Kind == events.KindCloseWait {
			t.Errorf("quiet mode wrote a close_wait: %+v", ev)
		}
	}
}

// Drops are reported once, as the difference since the last report.
func TestLostReported(t *testing.T) {
	h := start(t, Config{}, Selection{}, nil)
	h.src.mu.Lock()
	h.src.lost[events.LostRingbufFull] = 5
	h.src.mu.Unlock()
	lost := h.out.waitFor(t, "lost", func(ev events.Event) bool { return ev.Kind == events.KindLost })
	if lost.Lost[events.LostRingbufFull] != 5 || lost.Lost.Total() != 5 {
		t.Errorf("lost = %v, want ringbuf_full 5", lost.Lost)
	}
	h.src.mu.Lock()
	h.src.lost[events.LostRingbufFull] = 7
	h.src.mu.Unlock()
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	var total uint64
	n := 0
	for _, ev := range h.out.events() {
		if ev.Kind == events.KindLost {
			n++
			total += ev.Lost.Total()
		}
	}
	if n != 2 || total != 7 || h.p.Lost().Total() != 7 {
		t.Errorf("%d lost events totalling %d (pipeline says %d), want 2 totalling 7", n, total, h.p.Lost().Total())
	}
}

// A reader that closed its end of the output ends the run without error.
func TestClosedOutputEndsRun(t *testing.T) {
	h := start(t, Config{}, Selection{}, func(h *harness) { h.src.put(socket(1, 2*threshold)) })
	h.out.mu.Lock()
	h.out.err = syscall.EPIPE
	h.out.mu.Unlock()
	h.ticker(t)
	select {
	case err := <-h.done:
		close(h.done)
		if err != nil {
			t.Errorf("run ended with %v, want nil for a closed pipe", err)
		}
		if !OutputClosed(h.p.Err()) {
			t.Errorf("Err() = %v, want EPIPE", h.p.Err())
		}
	case <-time.After(waitTimeout):
		t.Fatal("run did not end when its output was closed")
	}
}

// The status counts closes and the p99 over the interval from the
// kernel's aggregates, and the sockets in CLOSE-WAIT now.
func TestStatus(t *testing.T) {
	h := start(t, Config{StatusInterval: 150 * time.Millisecond}, Selection{}, func(h *harness) {
		h.src.aggs = []events.Aggregate{{Entered: 10, Closed: 4, Aborted: 1}}
	})
	statuses := func(n int) []Status {
		deadline := time.Now().Add(waitTimeout)
		for {
			h.out.mu.Lock()
			got := append([]Status(nil), h.out.status...)
			h.out.mu.Unlock()
			if len(got) >= n || time.Now().After(deadline) {
				return got
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	first := statuses(1)
	if len(first) != 1 || first[0].InCloseWait != 5 || first[0].Closes != 0 || first[0].HasP99 {
		t.Fatalf("first status %+v, want 5 in CLOSE-WAIT and no closes since start", first)
	}
	h.src.mu.Lock()
	h.src.aggs[0].Entered, h.src.aggs[0].Closed = 1010, 1004
	h.src.aggs[0].Hist[3] = 985 // [8, 16) µs
	h.src.aggs[0].Hist[12] = 15 // [4, 8) ms: the slowest 1.5 %
	h.src.mu.Unlock()
	got := statuses(2)
	if len(got) < 2 {
		t.Fatal("no second status")
	}
	st := got[1]
	if st.InCloseWait != 5 || st.Closes != 1000 || !st.HasP99 || st.P99 != events.HistUpperBound(12) || st.Interval < 100*time.Millisecond {
		t.Errorf("status %+v, want 5 in CLOSE-WAIT, 1000 closes, p99 %v", st, events.HistUpperBound(12))
	}
}

// Readers of the tracker never wait for a slow sink: its callbacks run
// outside the lock.
func TestTrackerReadableDuringSlowSink(t *testing.T) {
	block := make(chan struct{})
	blocked := make(chan struct{}, 1)
	h := start(t, Config{}, Selection{}, func(h *harness) {
		h.src.put(socket(1, 2*threshold))
		h.out.block, h.out.blocked = block, blocked
	})
	h.src.progress() // the stuck report's Write blocks
	select {
	case <-blocked:
	case <-time.After(waitTimeout):
		t.Fatal("the stuck report was never written")
	}
	read := make(chan int)
	go func() {
		n := 0
		for range h.p.Tracker().All() {
			n++
		}
		read <- n + h.p.Tracker().Len() + h.p.Tracker().Stuck()
	}()
	select {
	case n := <-read:
		if n != 3 {
			t.Errorf("All+Len+Stuck = %d while the report is written, want 3", n)
		}
	case <-time.After(waitTimeout):
		t.Error("reading the tracker waited for a blocked sink")
	}
	close(block)
}

// A stuck socket whose close record was lost (the ring buffer was full)
// leaves the kernel table without a close. Once the drop is counted, a
// whole read of the table misses it, and once every record up to then has
// been handled it is dropped, counted as an exit missed, not counted stuck
// for ever.
func TestLostCloseIsSweptAfterProgress(t *testing.T) {
	h := start(t, Config{}, Selection{}, func(h *harness) {
		h.src.put(socket(1, 2*threshold))
		h.src.put(socket(2, 2*threshold))
	})
	h.ticker(t)
	for _, sock := range []uint64{1, 2} {
		h.out.waitFor(t, "stuck", func(ev events.Event) bool { return ev.Kind == events.KindStuck && ev.Sock == sock })
	}
	fin := h.src.table[2].FinBootNS
	h.src.closeSocket(1) // its close record is lost
	h.src.closeSocket(2)
	h.src.send(closeOf(2, fin)) // this one arrives
	h.out.waitFor(t, "app_close of sock 2", func(ev events.Event) bool { return ev.Kind == events.KindAppClose && ev.Sock == 2 })
	waitMarks(t, h.p, 3) // marks the loop handled meanwhile
	if h.p.Tracker().Len() != 1 {
		t.Fatalf("tracker holds %d before any drop is known, want 1: only a drop makes it check", h.p.Tracker().Len())
	}
	h.src.mu.Lock()
	h.src.lost[events.LostRingbufFull]++ // the kernel counted the drop
	h.src.mu.Unlock()
	deadline := time.Now().Add(waitTimeout)
	for h.p.Tracker().Len() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if h.p.Tracker().Len() != 0 || h.p.Tracker().Stuck() != 0 || h.p.Tracker().Vanished() != 1 {
		t.Errorf("tracker holds %d (%d stuck), %d vanished; want 0, 0, 1", h.p.Tracker().Len(), h.p.Tracker().Stuck(), h.p.Tracker().Vanished())
	}
	h.out.waitFor(t, "app_close of sock 2", func(ev events.Event) bool { return ev.Kind == events.KindAppClose && ev.Sock == 2 && ev.WasStuck })
}

// waitMarks waits until the loop has handled n more progress marks.
func waitMarks(t *testing.T, p *Pipeline, n int) {
	t.Helper()
	last := p.LastProgress()
	for deadline := time.Now().Add(waitTimeout); n > 0; time.Sleep(5 * time.Millisecond) {
		if now := p.LastProgress(); now.After(last) {
			last = now
			n--
		}
		if time.Now().After(deadline) {
			t.Fatalf("the loop handled no progress mark in %v", waitTimeout)
		}
	}
}

// A scan is skipped while the kernel counts no socket in CLOSE-WAIT that
// the tracker does not have: nothing in the table to take in.
func TestScanSkippedWhenAllTracked(t *testing.T) {
	h := start(t, Config{}, Selection{}, nil)
	h.ticker(t)
	for deadline := time.Now().Add(waitTimeout); h.p.scansSkipped.Load() < 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no scan skipped in %v", waitTimeout)
		}
	}
	if h.p.scans.Load() != 0 || h.p.scansSkipped.Load() == 0 {
		t.Errorf("%d scans, %d skipped with nothing in CLOSE-WAIT; want none, some", h.p.scans.Load(), h.p.scansSkipped.Load())
	}
	h.src.put(socket(1, 2*threshold))
	h.out.waitFor(t, "stuck", func(ev events.Event) bool { return ev.Kind == events.KindStuck })
	if h.p.scans.Load() == 0 {
		t.Error("no scan with a socket in CLOSE-WAIT")
	}
}

// A socket the tracker has no room for is counted as table_full once,
// however often a scan that reads the whole table offers it again.
func TestTableFullCountedOnce(t *testing.T) {
	cfg := Config{Track: track.Config{Threshold: threshold, MaxSockets: 1, MaxOwnerWait: DefaultMaxOwnerWait}}
	h := start(t, cfg, Selection{}, func(h *harness) {
		h.src.put(socket(1, 2*threshold))
		h.src.put(socket(2, 2*threshold))
	})
	h.ticker(t)
	h.out.waitFor(t, "stuck", func(ev events.Event) bool { return ev.Kind == events.KindStuck })
	deadline := time.Now().Add(waitTimeout)
	for h.p.scans.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := h.p.scans.Load(); n < 4 {
		t.Fatalf("%d scans in %v, want several to offer the socket again", n, waitTimeout)
	}
	if n := h.p.Tracker().TableFull(); n != 1 {
		t.Errorf("table_full = %d after %d scans, want 1", n, h.p.scans.Load())
	}
}
