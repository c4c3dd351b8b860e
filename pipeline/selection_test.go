package pipeline

import (
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

func TestSelection(t *testing.T) {
	proc := &events.Process{PID: 42, Comm: "couchdb"}
	owned := []events.Owner{{Process: proc, FD: 5}}
	ev := func(k events.Kind, mod func(*events.Event)) *events.Event {
		e := &events.Event{Kind: k, Owners: owned}
		if mod != nil {
			mod(e)
		}
		return e
	}
	slow := func(e *events.Event) { e.AgeNS, e.AgeKnown = int64(2*time.Second), true }
	fast := func(e *events.Event) { e.AgeNS, e.AgeKnown = int64(time.Millisecond), true }
	stuck := func(e *events.Event) { e.WasStuck = true }
	var closer events.Task
	closer.PID = 99
	copy(closer.Comm[:], "worker")
	byCloser := func(e *events.Event) { e.Owners, e.Closer, e.HasCloser = nil, closer, true }
	for _, c := range []struct {
		name string
		sel  Selection
		ev   *events.Event
		want bool
	}{
		{"default stuck", Selection{}, ev(events.KindStuck, nil), true},
		{"default abort", Selection{}, ev(events.KindAbort, nil), true},
		{"default lost", Selection{}, ev(events.KindLost, nil), true},
		{"default close_wait", Selection{}, ev(events.KindCloseWait, nil), false},
		{"default app_close, healthy", Selection{}, ev(events.KindAppClose, fast), false},
		{"default app_close, slow but no floor", Selection{}, ev(events.KindAppClose, slow), false},
		{"default app_close, resolution", Selection{}, ev(events.KindAppClose, stuck), true},
		{"floor, slower", Selection{MinLatency: time.Second}, ev(events.KindAppClose, slow), true},
		{"floor, faster", Selection{MinLatency: time.Second}, ev(events.KindAppClose, fast), false},
		{"floor, age unknown", Selection{MinLatency: time.Second}, ev(events.KindAppClose, nil), false},
		{"every socket close_wait", Selection{EverySocket: true}, ev(events.KindCloseWait, nil), true},
		{"every socket app_close", Selection{EverySocket: true}, ev(events.KindAppClose, fast), true},
		{"kinds exclude", Selection{Kinds: Kinds(events.KindStuck)}, ev(events.KindAbort, nil), false},
		{"kinds include", Selection{Kinds: Kinds(events.KindStuck)}, ev(events.KindStuck, nil), true},
		{"kinds exclude lost", Selection{Kinds: Kinds(events.KindStuck)}, ev(events.KindLost, nil), false},
		{"pid match", Selection{PIDs: []int{42}}, ev(events.KindStuck, nil), true},
		{"pid other", Selection{PIDs: []int{43}}, ev(events.KindStuck, nil), false},
		{"pid, no owner", Selection{PIDs: []int{42}}, ev(events.KindStuck, func(e *events.Event) { e.Owners = nil }), false},
		{"pid, lost passes", Selection{PIDs: []int{43}}, ev(events.KindLost, nil), true},
		{"comm match", Selection{Comms: []string{"couchdb"}}, ev(events.KindStuck, nil), true},
		{"comm of closer", Selection{Comms: []string{"worker"}}, ev(events.KindAppClose, func(e *events.Event) { stuck(e); byCloser(e) }), true},
		{"comm other", Selection{Comms: []string{"nginx"}}, ev(events.KindStuck, nil), false},
	} {
		if got := c.sel.Pass(c.ev); got != c.want {
			t.Errorf("%s: Pass = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestParseKinds(t *testing.T) {
	s, err := ParseKinds("stuck, abort")
	if err != nil || !s.Has(events.KindStuck) || !s.Has(events.KindAbort) || s.Has(events.KindAppClose) {
		t.Errorf("ParseKinds(stuck, abort) = %b, %v", s, err)
	}
	for _, bad := range []string{"", "stuck,", "transition", "STUCK"} {
		if _, err := ParseKinds(bad); err == nil {
			t.Errorf("ParseKinds(%q) succeeded", bad)
		}
	}
}
