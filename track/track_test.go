package track

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
)

const ms = int64(time.Millisecond)

type sink []events.Event

func (s *sink) emit(ev *events.Event) { *s = append(*s, *ev) }

func (s *sink) kinds() []events.Kind {
	var k []events.Kind
	for _, ev := range *s {
		k = append(k, ev.Kind)
	}
	return k
}

func closeWait(sock uint64, finNS int64) *events.Event {
	return &events.Event{Kind: events.KindCloseWait, Sock: sock, BootNS: finNS, FinBootNS: finNS, AgeKnown: true, LocalPort: 80}
}

func leave(kind events.Kind, sock uint64, atNS int64) *events.Event {
	return &events.Event{Kind: kind, Sock: sock, BootNS: atNS, NewState: events.StateLastAck}
}

func newTracker(t *testing.T, threshold, repeat time.Duration, max int) *Tracker {
	t.Helper()
	cfg := Config{Threshold: threshold, Repeat: repeat, MaxSockets: max}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return New(cfg, bootclock.New())
}

func TestStuckOnceThenClose(t *testing.T) {
	tk := newTracker(t, 200*time.Millisecond, 0, 10)
	var out sink
	tk.Observe(closeWait(1, 1000*ms), out.emit)
	tk.Expire(1199*ms, nil, nil, out.emit)
	if len(out) != 1 {
		t.Fatalf("stuck before the threshold: %v", out.kinds())
	}
	tk.Expire(1250*ms, nil, nil, out.emit)
	tk.Expire(5000*ms, nil, nil, out.emit) // no repeat configured
	if got := out.kinds(); len(got) != 2 || got[1] != events.KindStuck {
		t.Fatalf("events = %v, want close_wait, stuck", got)
	}
	if st := out[1]; st.AgeNS != 250*ms || st.ThresholdNS != 200*ms || !st.AgeKnown || st.LocalPort != 80 {
		t.Errorf("stuck = %+v", st)
	}
	var snap []Info
	for info := range tk.All() {
		snap = append(snap, info)
	}
	if len(snap) != 1 || !snap[0].Stuck || tk.Stuck() != 1 {
		t.Errorf("All = %+v, Stuck = %d, want one stuck entry", snap, tk.Stuck())
	}
	// The kernel did not know the FIN time: the table supplies it.
	tk.Observe(leave(events.KindAppClose, 1, 6000*ms), out.emit)
	ac := out[2]
	if ac.Kind != events.KindAppClose || !ac.WasStuck || !ac.AgeKnown || ac.AgeNS != 5000*ms {
		t.Errorf("app_close = %+v, want was_stuck with age 5s", ac)
	}
	if tk.Len() != 0 {
		t.Errorf("%d sockets still tracked after close", tk.Len())
	}
	if len(tk.due) != 0 {
		t.Error("a report is still scheduled after close")
	}
}

func TestRepeat(t *testing.T) {
	tk := newTracker(t, 100*time.Millisecond, 50*time.Millisecond, 10)
	var out sink
	tk.Observe(closeWait(1, 0), out.emit)
	for now := int64(0); now <= 300*ms; now += 10 * ms {
		tk.Expire(now, nil, nil, out.emit)
	}
	var ages []int64
	for _, ev := range out[1:] {
		ages = append(ages, ev.AgeNS/ms)
	}
	want := []int64{100, 150, 200, 250, 300}
	if len(ages) != len(want) {
		t.Fatalf("stuck ages = %v ms, want %v", ages, want)
	}
	for i := range want {
		if ages[i] != want[i] {
			t.Fatalf("stuck ages = %v ms, want %v", ages, want)
		}
	}
	// After a long pause, one report, not a burst.
	out = out[:0]
	tk.Expire(10_000*ms, nil, nil, out.emit)
	if len(out) != 1 {
		t.Errorf("%d reports after a pause, want 1", len(out))
	}
}

func TestHeapOrderAndRemoval(t *testing.T) {
	tk := newTracker(t, 100*time.Millisecond, 0, 100)
	var out sink
	for i, fin := range []int64{50, 10, 40, 20, 30} {
		tk.Observe(closeWait(uint64(i+1), fin*ms), out.emit)
	}
	tk.Observe(leave(events.KindAppClose, 3, 60*ms), out.emit) // fin 40 closes early
	out = out[:0]
	tk.Expire(1000*ms, nil, nil, out.emit)
	var socks []uint64
	for _, ev := range out {
		socks = append(socks, ev.Sock)
	}
	want := []uint64{2, 4, 5, 1} // by FIN time; 3 closed
	if len(socks) != len(want) {
		t.Fatalf("stuck order = %v, want %v", socks, want)
	}
	for i := range want {
		if socks[i] != want[i] {
			t.Fatalf("stuck order = %v, want %v", socks, want)
		}
	}
}

func TestBoundCountsOverflow(t *testing.T) {
	tk := newTracker(t, time.Second, 0, 2)
	var out sink
	for i := range 5 {
		tk.Observe(closeWait(uint64(i+1), int64(i)), out.emit)
	}
	if tk.Len() != 2 || tk.TableFull() != 3 {
		t.Errorf("len %d table_full %d, want 2 and 3", tk.Len(), tk.TableFull())
	}
	if len(out) != 5 {
		t.Errorf("%d close_wait events passed on, want all 5", len(out))
	}
	// An untracked socket's close is still reported, without a made-up age.
	tk.Observe(leave(events.KindAppClose, 5, 100), out.emit)
	if ac := out[5]; ac.AgeKnown || ac.WasStuck {
		t.Errorf("untracked close = %+v", ac)
	}
}

func TestReusedIDReplacesEntry(t *testing.T) {
	tk := newTracker(t, time.Second, 0, 10)
	var out sink
	tk.Observe(closeWait(7, 0), out.emit)
	tk.Observe(closeWait(7, 500*ms), out.emit)
	if tk.Len() != 1 {
		t.Fatalf("len %d after a reused id, want 1", tk.Len())
	}
	tk.Expire(1200*ms, nil, nil, out.emit)
	if len(out) != 2 {
		t.Errorf("stuck reported for the replaced entry: %v", out.kinds())
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{Threshold: 0, MaxSockets: 1},
		{Threshold: -time.Second, MaxSockets: 1},
		{Threshold: time.Second, Repeat: -time.Second, MaxSockets: 1},
		{Threshold: time.Second, Repeat: time.Millisecond, MaxSockets: 1},
		{Threshold: time.Second},
	} {
		if c.Validate() == nil {
			t.Errorf("%+v validated", c)
		}
	}
}

// A socket whose exit event was lost is dropped when the verifier says it
// left CLOSE-WAIT, instead of being reported stuck for ever.
func TestVerifierDropsVanishedSockets(t *testing.T) {
	tk := newTracker(t, 100*time.Millisecond, 100*time.Millisecond, 10)
	var out sink
	tk.Observe(closeWait(1, 0), out.emit)
	tk.Observe(closeWait(2, 0), out.emit)
	gone := map[uint64]bool{2: true}
	verify := func(ev *events.Event) (bool, error) { return !gone[ev.Sock], nil }
	out = out[:0]
	if err := tk.Expire(150*ms, verify, nil, out.emit); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Sock != 1 {
		t.Fatalf("stuck reports = %+v, want only socket 1", out)
	}
	if tk.Len() != 1 || tk.Vanished() != 1 {
		t.Errorf("len %d vanished %d, want 1 and 1", tk.Len(), tk.Vanished())
	}
	failing := func(*events.Event) (bool, error) { return false, errors.New("map lookup failed") }
	if err := tk.Expire(300*ms, failing, nil, out.emit); err == nil {
		t.Error("a verifier error was not returned")
	}
}

// Owners found at a stuck report are kept, replace older ones (also with
// none), and the close reports them as last seen, with the container
// context found through them.
func TestRefreshKeepsOwnersForTheClose(t *testing.T) {
	tk := newTracker(t, 100*time.Millisecond, 100*time.Millisecond, 10)
	var out sink
	cw := closeWait(1, 0)
	cw.Owners, cw.OwnerSource = []events.Owner{{Process: &events.Process{PID: 10, Comm: "sender"}}}, events.OwnerProc
	tk.Observe(cw, out.emit)
	if !tk.Has(1) || tk.Has(2) {
		t.Fatalf("Has(1)=%v Has(2)=%v", tk.Has(1), tk.Has(2))
	}
	// First report: the descriptor moved to another process.
	moved := func(ev *events.Event) time.Duration {
		ev.Inode = 77
		ev.Owners, ev.OwnerSource = []events.Owner{{Process: &events.Process{PID: 20, Comm: "receiver"}}}, events.OwnerProc
		ev.ContainerID = "c1"
		return 0
	}
	if err := tk.Expire(100*ms, nil, moved, out.emit); err != nil {
		t.Fatal(err)
	}
	if st := out[len(out)-1]; st.Kind != events.KindStuck || st.Owners[0].PID != 20 || st.Inode != 77 {
		t.Fatalf("stuck = %+v, want the refreshed owner 20 and inode 77", st)
	}
	tk.Observe(leave(events.KindAppClose, 1, 150*ms), out.emit)
	ac := out[len(out)-1]
	if ac.OwnerSource != events.OwnerLastSeen || len(ac.Owners) != 1 || ac.Owners[0].PID != 20 || ac.ContainerID != "c1" {
		t.Errorf("app_close owners %+v (%v) container %q, want last_seen 20 in c1", ac.Owners, ac.OwnerSource, ac.ContainerID)
	}

	// A refresh that finds nobody clears the owners: the close names none.
	tk.Observe(closeWait(2, 1000*ms), out.emit)
	tk.Expire(1100*ms, nil, func(ev *events.Event) time.Duration {
		ev.Owners, ev.OwnerSource = nil, events.OwnerUnresolved
		return 0
	}, out.emit)
	tk.Observe(leave(events.KindAppClose, 2, 1200*ms), out.emit)
	if ac := out[len(out)-1]; len(ac.Owners) != 0 || ac.OwnerSource == events.OwnerLastSeen {
		t.Errorf("app_close after an empty refresh names %+v (%v)", ac.Owners, ac.OwnerSource)
	}
}

// Steady churn, each socket entering and leaving CLOSE-WAIT, allocates
// nothing once the table has warmed up.
func TestChurnDoesNotAllocate(t *testing.T) {
	tk := newTracker(t, time.Minute, 0, 1024)
	discard := func(*events.Event) {}
	sock := uint64(0)
	var ev events.Event // reused, as the event loop does
	cycle := func() {
		sock++
		ev = events.Event{Kind: events.KindCloseWait, Sock: sock, BootNS: int64(sock), FinBootNS: int64(sock), AgeKnown: true}
		tk.Observe(&ev, discard)
		ev = events.Event{Kind: events.KindAppClose, Sock: sock, BootNS: int64(sock) + 1}
		tk.Observe(&ev, discard)
	}
	for range 100 {
		cycle()
	}
	if allocs := testing.AllocsPerRun(1000, cycle); allocs != 0 {
		t.Errorf("%.2f allocations per socket in steady churn, want 0", allocs)
	}
}

// A stuck report and the snapshot rebuild the socket exactly as its
// close_wait event described it, from the compact entry.
func TestEntryRoundTrip(t *testing.T) {
	tk := newTracker(t, 100*time.Millisecond, 0, 10)
	proc := &events.Process{PID: 42, Comm: "couchdb"}
	v4 := events.Event{
		Kind: events.KindCloseWait, Sock: 1, Key: 0xffff0001, Inode: 77, CgroupID: 9, BootNS: ms, FinBootNS: ms, AgeKnown: true,
		Family: events.FamilyIPv4, LocalAddr: netip.MustParseAddr("10.1.2.3"), LocalPort: 5984,
		RemoteAddr: netip.MustParseAddr("192.168.0.9"), RemotePort: 40000, NetNS: 4026531840,
		ContainerID: "abc", PodUID: "pod-1", Owners: []events.Owner{{Process: proc, FD: 12}},
		OwnerSource: events.OwnerProc, KernelTracked: true, Dir: events.DirInbound,
	}
	v6 := v4
	v6.Sock, v6.Family, v6.AgeKnown, v6.KernelTracked, v6.Dir = 2, events.FamilyIPv6, false, false, events.DirOutbound
	v6.LocalAddr, v6.RemoteAddr = netip.MustParseAddr("fd00::1"), netip.MustParseAddr("2001:db8::2")
	v6.ContainerID, v6.PodUID, v6.Owners = "", "", nil
	var out sink
	tk.Observe(&v4, out.emit)
	tk.Observe(&v6, out.emit)
	tk.Expire(200*ms, nil, nil, out.emit)
	if len(out) != 4 {
		t.Fatalf("events = %v, want 2 close_wait, 2 stuck", out.kinds())
	}
	for _, st := range out[2:] {
		want := v4
		if st.Sock == v6.Sock {
			want = v6
		}
		got := st
		got.Kind, got.Time, got.BootNS, got.AgeNS, got.ThresholdNS = want.Kind, want.Time, want.BootNS, want.AgeNS, want.ThresholdNS
		if !reflect.DeepEqual(got, want) {
			t.Errorf("stuck report rebuilt\n%+v\nwant\n%+v", got, want)
		}
	}
	n := 0
	for e := range tk.All() {
		n++
		if e.Sock == v4.Sock && (e.LocalAddr != v4.LocalAddr || e.RemotePort != v4.RemotePort || e.CgroupID != 9 ||
			!e.AgeKnown || !e.Stuck || len(e.Owners) != 1 || e.Owners[0].PID != 42) {
			t.Errorf("All entry %+v", e)
		}
	}
	if n != 2 {
		t.Errorf("All gave %d entries, want 2", n)
	}
}

// The table is what a leak of 100,000 sockets costs: keep its entry at 128
// bytes (a size class of the Go allocator).
func TestEntrySize(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n > 128 {
		t.Errorf("track entry is %d bytes, want at most 128", n)
	}
}

// The free flag bits hold what a stuck report read of the socket; the
// entry stays within 128 bytes.
func TestDiagnosisKept(t *testing.T) {
	if ageKnown|reportedStuck|kernelTracked|inbound|outbound|diagKnown|readEOF|unreadData != 0xff {
		t.Fatal("entry flags overlap or overflow")
	}
	tk := newTracker(t, 100*time.Millisecond, 100*time.Millisecond, 10)
	var out sink
	tk.Observe(closeWait(1, 0), nil)
	info := func() Info {
		for i := range tk.All() {
			return i
		}
		t.Fatal("nothing tracked")
		return Info{}
	}
	tk.Expire(100*ms, nil, func(*events.Event) time.Duration { return 0 }, out.emit)
	if i := info(); i.DiagKnown || i.ReadEOF || i.UnreadData {
		t.Errorf("no diagnosis made, Info says %+v", i)
	}
	diag := func(eof bool, unread uint64) Refresher {
		return func(ev *events.Event) time.Duration {
			ev.DiagKnown, ev.ReadEOF, ev.UnreadBytes = true, eof, unread
			return 0
		}
	}
	tk.Expire(200*ms, nil, diag(false, 100), out.emit)
	if i := info(); !i.DiagKnown || i.ReadEOF || !i.UnreadData || !i.Stuck {
		t.Errorf("unread data: Info %+v", i)
	}
	if last := out[len(out)-1]; !last.DiagKnown || last.UnreadBytes != 100 {
		t.Errorf("stuck report %+v, want the diagnosis", last)
	}
	tk.Expire(300*ms, nil, diag(true, 0), out.emit)
	if i := info(); !i.DiagKnown || !i.ReadEOF || i.UnreadData {
		t.Errorf("read to end of file: Info %+v", i)
	}
	tk.Expire(400*ms, nil, func(*events.Event) time.Duration { return 0 }, out.emit) // the read failed
	if i := info(); !i.DiagKnown || !i.ReadEOF {
		t.Errorf("a failed read lost the last diagnosis: Info %+v", i)
	}
	if last := out[len(out)-1]; last.DiagKnown {
		t.Errorf("a report without a diagnosis says DiagKnown: %+v", last)
	}
}

// A first report whose owner cannot be looked up yet is held back, up to
// MaxOwnerWait past its due time, then goes out as it is; repeats are
// never held back.
func TestStuckHeldBackForOwner(t *testing.T) {
	cfg := Config{Threshold: 100 * time.Millisecond, Repeat: 100 * time.Millisecond, MaxSockets: 10, MaxOwnerWait: 50 * time.Millisecond}
	tk := New(cfg, bootclock.New())
	var out sink
	tk.Observe(closeWait(1, 0), nil)
	calls := 0
	busy := func(ev *events.Event) time.Duration {
		calls++
		ev.Owners, ev.OwnerSource = nil, events.OwnerUnresolved
		return 20 * time.Millisecond
	}
	tk.Expire(100*ms, nil, busy, out.emit)
	if len(out) != 0 || tk.Deferred() != 1 {
		t.Fatalf("report not held back: %v, deferred %d", out.kinds(), tk.Deferred())
	}
	tk.Expire(119*ms, nil, busy, out.emit) // not due again yet
	if calls != 1 || len(out) != 0 {
		t.Fatalf("refresh called %d times before the retry time, events %v", calls, out.kinds())
	}
	tk.Expire(120*ms, nil, busy, out.emit) // retry; 140 still within 150
	if len(out) != 0 || tk.Deferred() != 2 {
		t.Fatalf("second retry not held back: %v", out.kinds())
	}
	tk.Expire(140*ms, nil, busy, out.emit) // 160 would pass 150: out it goes
	if len(out) != 1 || out[0].Kind != events.KindStuck || out[0].AgeNS != 140*ms {
		t.Fatalf("events %v, want one stuck at 140ms after the bound", out.kinds())
	}
	tk.Expire(240*ms, nil, busy, out.emit) // the repeat: not held back
	if len(out) != 2 || tk.Deferred() != 2 {
		t.Fatalf("repeat held back: events %v deferred %d", out.kinds(), tk.Deferred())
	}
	// Found on the retry: the report names the owner.
	tk.Observe(closeWait(2, 1000*ms), nil)
	tries := 0
	found := func(ev *events.Event) time.Duration {
		tries++
		if tries == 1 {
			return 10 * time.Millisecond
		}
		ev.Owners, ev.OwnerSource = []events.Owner{{Process: &events.Process{PID: 7}}}, events.OwnerProc
		return 0
	}
	tk.Expire(1100*ms, nil, found, out.emit)
	tk.Expire(1110*ms, nil, found, out.emit)
	last := out[len(out)-1]
	if last.Sock != 2 || last.Kind != events.KindStuck || len(last.Owners) != 1 || last.Owners[0].PID != 7 {
		t.Errorf("stuck after retry = %+v, want the owner found on the retry", last)
	}
}

// A first report late by less than Repeat (a loaded machine's slow tick)
// does not push the next back: it stays due at threshold + repeat. Late by
// more, the next is a whole repeat after the late one (no burst).
func TestRepeatAfterLateReport(t *testing.T) {
	tk := newTracker(t, 200*time.Millisecond, 150*time.Millisecond, 10)
	var out sink
	tk.Observe(closeWait(1, 0), out.emit)
	tk.Expire(300*ms, nil, nil, out.emit) // due at 200, reported at 300
	tk.Expire(349*ms, nil, nil, out.emit)
	if len(out) != 2 || out[1].AgeNS != 300*ms {
		t.Fatalf("events %v, want close_wait and one stuck at 300ms", out.kinds())
	}
	tk.Expire(350*ms, nil, nil, out.emit)
	if len(out) != 3 || out[2].AgeNS != 350*ms {
		t.Fatalf("events %v, want a second stuck at 350ms (200ms + 150ms)", out.kinds())
	}
	// Due at 500, reported at 900: the next is due at 1050, not 650.
	tk.Expire(900*ms, nil, nil, out.emit)
	tk.Expire(1049*ms, nil, nil, out.emit)
	if len(out) != 4 || out[3].AgeNS != 900*ms {
		t.Fatalf("%d events, want a third stuck at 900ms and no burst", len(out))
	}
	tk.Expire(1050*ms, nil, nil, out.emit)
	if len(out) != 5 || out[4].AgeNS != 1050*ms {
		t.Fatalf("%d events, want a fourth stuck at 1050ms", len(out))
	}
}

// A socket found at start-up has an age from first sight: its abort keeps
// that lower bound (age_known false) when the kernel had no FIN time.
func TestAbortOfUnknownAgeKeepsLowerBound(t *testing.T) {
	tk := newTracker(t, 200*time.Millisecond, 0, 10)
	var out sink
	found := closeWait(1, 1000*ms)
	found.AgeKnown = false
	tk.Observe(found, out.emit)
	tk.Expire(1300*ms, nil, nil, out.emit)
	ab := leave(events.KindAbort, 1, 4000*ms)
	ab.NewState = events.StateClose
	tk.Observe(ab, out.emit)
	if got := out.kinds(); len(got) != 3 || got[2] != events.KindAbort {
		t.Fatalf("events = %v, want close_wait, stuck, abort", got)
	}
	st, a := out[1], out[2]
	if a.AgeKnown || a.AgeNS != 3000*ms || a.FinBootNS != 1000*ms || !a.WasStuck {
		t.Errorf("abort = %+v, want the lower bound 3s, age unknown, was stuck", a)
	}
	if st.AgeKnown || a.AgeNS < st.AgeNS {
		t.Errorf("abort's age %d below stuck's %d", a.AgeNS, st.AgeNS)
	}
}
