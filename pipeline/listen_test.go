package pipeline

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// listingSource is a fakeSource that lists listeners.
type listingSource struct {
	*fakeSource
	byNS map[uint32][]events.Listener
}

func (s *listingSource) Listening() (map[uint32][]events.Listener, error) { return s.byNS, nil }

// A listener's drops are reported when they start: not the drops it had
// when first seen, once when they rise after a quiet look, not again
// while they go on, and not twice within a minute; a namespace missing
// from a listing keeps its state; the event names the listener's holder.
func TestListenDropsWhenTheyStart(t *testing.T) {
	src := &listingSource{fakeSource: newFakeSource()}
	l := events.Listener{Local: netip.MustParseAddrPort("0.0.0.0:5984"), Inode: 40, Queue: 2, Backlog: 1, CgroupID: 9}
	set := func(drops uint64) {
		l.Drops = drops
		src.byNS = map[uint32][]events.Listener{1: {l}}
	}
	rec := &recorder{}
	attr := &fakeAttr{owners: map[uint64]*events.Process{40: {PID: 7, Comm: "beam.smp"}}}
	p := New(Config{CloseWait: true}, src, attr, rec)
	t0 := time.Now()
	look := func(after time.Duration, drops uint64) int {
		if drops != ^uint64(0) {
			set(drops)
		}
		before := len(rec.evs)
		p.watchListeners(t0.Add(after))
		return len(rec.evs) - before
	}
	steps := []struct {
		after time.Duration
		drops uint64
		want  int
		what  string
	}{
		{0, 100, 0, "first seen with 100 drops: history"},
		{5 * time.Second, 100, 0, "no new drops"},
		{10 * time.Second, 130, 1, "drops start"},
		{15 * time.Second, 160, 0, "drops go on"},
		{20 * time.Second, 160, 0, "drops stop"},
		{25 * time.Second, 170, 0, "drops start again within a minute of the event"},
		{30 * time.Second, 170, 0, "quiet"},
		{80 * time.Second, 175, 1, "drops start again a minute later"},
	}
	for _, s := range steps {
		if got := look(s.after, s.drops); got != s.want {
			t.Fatalf("%s: %d events, want %d: %+v", s.what, got, s.want, rec.evs)
		}
	}
	ev := rec.evs[0]
	if ev.Kind != events.KindListenDrops || ev.Dropped != 30 || ev.DropIntervalNS != (5*time.Second).Nanoseconds() || ev.NetNS != 1 ||
		ev.CgroupID != 9 || ev.Listener == nil || ev.Listener.Drops != 130 || len(ev.Listener.Owners) != 1 ||
		ev.Listener.Owners[0].PID != 7 || len(ev.Owners) != 0 {
		t.Errorf("event %+v (listener %+v)", ev, ev.Listener)
	}
	// A namespace not listed keeps its listeners' counts: back, the
	// drops since the last look it was in are what counts, not its
	// history.
	src.byNS = map[uint32][]events.Listener{}
	look(85*time.Second, ^uint64(0))
	if got := look(150*time.Second, 175); got != 0 {
		t.Errorf("a listener back after an unlisted look, no new drops: %d events, want 0", got)
	}
	if got := look(155*time.Second, 190); got != 1 || rec.evs[len(rec.evs)-1].Dropped != 15 {
		t.Errorf("then drops start: %d events (%+v), want 1 of 15", got, rec.evs)
	}
	// A listener whose count went down is another socket: counted afresh.
	if got := look(300*time.Second, 5); got != 0 {
		t.Errorf("a new listener at the same inode: %d events", got)
	}
	if got := look(305*time.Second, 9); got != 1 {
		t.Errorf("its drops start: %d events, want 1", got)
	}
}

// A listen_drops event whose listener's holders cannot be looked up yet
// (the scan budget is spent) waits for them rather than name nobody, and
// goes out unresolved once the owner wait is over.
func TestListenDropsWaitForHolders(t *testing.T) {
	src := &listingSource{fakeSource: newFakeSource()}
	rec := &recorder{}
	attr := &fakeAttr{owners: map[uint64]*events.Process{40: {PID: 7, Comm: "beam.smp"}}, busy: 1}
	p := New(Config{CloseWait: true}, src, attr, rec)
	t0 := time.Now()
	l := events.Listener{Local: netip.MustParseAddrPort("0.0.0.0:5984"), Inode: 40}
	p.emitListenDrops(t0, 1, l, 3, time.Second)
	if len(rec.evs) != 0 {
		t.Fatalf("emitted before its holders were looked up: %+v", rec.evs)
	}
	p.retryListenDrops(t0.Add(time.Millisecond))
	if len(rec.evs) != 0 {
		t.Fatalf("emitted before the retry time: %+v", rec.evs)
	}
	p.retryListenDrops(t0.Add(30 * time.Millisecond))
	if len(rec.evs) != 1 || len(rec.evs[0].Listener.Owners) != 1 || rec.evs[0].Listener.Owners[0].PID != 7 {
		t.Fatalf("after the retry: %+v", rec.evs)
	}
	attr.owners, attr.busy = nil, 1000
	p.emitListenDrops(t0, 1, l, 3, time.Second)
	p.retryListenDrops(t0.Add(DefaultMaxOwnerWait + time.Second))
	if len(rec.evs) != 2 || len(rec.evs[1].Listener.Owners) != 0 {
		t.Errorf("past the owner wait: %+v, want it out, unresolved", rec.evs)
	}
}
