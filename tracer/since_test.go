package tracer

import (
	"testing"

	"github.com/tcptrace/tcptrace/events"
)

func transition(key uint64, at int64, old, new events.State) events.Event {
	return events.Event{Kind: events.KindTransition, Key: key, BootNS: at, OldState: old, NewState: new}
}

func TestStateClock(t *testing.T) {
	const (
		closed   = events.StateClose
		synSent  = events.StateSynSent
		est      = events.StateEstablished
		fin1     = events.StateFinWait1
		fin2     = events.StateFinWait2
		listen   = events.StateListen
		synRecv  = events.StateSynRecv
		notKnown = int64(-1)
	)
	steps := []struct {
		name string
		ev   events.Event
		want int64 // PrevStateNS, or notKnown
	}{
		{"birth", transition(1, 100, closed, synSent), notKnown},
		{"connected", transition(1, 130, synSent, est), 30},
		{"first seen mid-life", transition(2, 140, est, fin1), notKnown},
		{"second socket goes on", transition(2, 150, fin1, fin2), 10},
		// ESTABLISHED -> FIN_WAIT1 of socket 1 was lost.
		{"after a lost transition", transition(1, 200, fin1, fin2), notKnown},
		{"chain resumes", transition(1, 260, fin2, closed), 60},
		{"freed at CLOSE", transition(1, 300, est, fin1), notKnown},
		// A listener at 3, then a passive child cloned at the same address
		// after the listener's close was lost: not the listener's time.
		{"listener", transition(3, 400, closed, listen), notKnown},
		{"child born from LISTEN", transition(3, 500, listen, synRecv), notKnown},
		{"child connected", transition(3, 520, synRecv, est), 20},
		{"other events pass", events.Event{Kind: events.KindAppClose, Key: 3, BootNS: 530}, notKnown},
		{"clock going back", transition(3, 510, est, fin1), notKnown},
	}
	c := newStateClock(8)
	for _, s := range steps {
		ev := s.ev
		c.observe(&ev)
		got := notKnown
		if ev.HasPrevState {
			got = ev.PrevStateNS
		}
		if got != s.want {
			t.Errorf("%s: prev_state_ns %d, want %d (-1: unknown)", s.name, got, s.want)
		}
	}
	if c.evicted.Load() != 0 {
		t.Errorf("%d evicted below the bound", c.evicted.Load())
	}
	if _, ok := c.entries[1]; !ok || len(c.entries) != 3 {
		t.Errorf("entries %v, want sockets 1, 2 and 3", c.entries)
	}
}

// At its bound the table evicts to make room, counts it, and never grows.
func TestStateClockBounded(t *testing.T) {
	c := newStateClock(4)
	for key := range uint64(10) {
		ev := transition(key, 100, events.StateClose, events.StateSynSent)
		c.observe(&ev)
	}
	if len(c.entries) != 4 || c.evicted.Load() != 6 {
		t.Errorf("%d entries, %d evicted; want 4 and 6", len(c.entries), c.evicted.Load())
	}
	ev := transition(9, 150, events.StateSynSent, events.StateEstablished)
	c.observe(&ev)
	if !ev.HasPrevState || ev.PrevStateNS != 50 {
		t.Errorf("newest socket: prev_state_ns %d (known %v), want 50", ev.PrevStateNS, ev.HasPrevState)
	}
}
