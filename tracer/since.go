package tracer

import (
	"sync/atomic"

	"github.com/tcptrace/tcptrace/events"
)

// stateClock gives each transition of trace mode the time its socket spent
// in the state it leaves (PrevStateNS), from the socket's previous
// transition. Trace mode delivers every transition anyway, so this costs
// the kernel nothing; keeping the timestamp with the socket in the kernel
// (socket-local storage) cost about 150 ns per program run, most of it
// allocating the storage for each new socket.
//
// Entries are keyed by the socket's kernel address, valid while the socket
// lives. An entry serves only the transition that leaves the state it
// recorded: when a transition in between was lost (a recursion miss or a
// full ring buffer), the duration is unknown, not wrong. A socket's birth
// discards what an earlier socket at the same address left, and its CLOSE
// frees its entry.
type stateClock struct {
	max     int
	entries map[uint64]since
	// evicted counts entries dropped to make room: those sockets' next
	// transition has no PrevStateNS.
	evicted atomic.Uint64
}

type since struct {
	bootNS int64
	state  events.State
}

func newStateClock(max int) *stateClock {
	return &stateClock{max: max, entries: make(map[uint64]since, min(max, 1024))}
}

// observe sets ev's PrevStateNS when known and records ev's new state.
func (c *stateClock) observe(ev *events.Event) {
	if ev.Kind != events.KindTransition {
		return
	}
	prev, ok := c.entries[ev.Key]
	if ok && !isBirth(ev.OldState, ev.NewState) && prev.state == ev.OldState && ev.BootNS >= prev.bootNS {
		ev.PrevStateNS, ev.HasPrevState = ev.BootNS-prev.bootNS, true
	}
	if ev.NewState == events.StateClose {
		if ok {
			delete(c.entries, ev.Key)
		}
		return
	}
	if !ok && len(c.entries) >= c.max {
		// Full: sockets whose CLOSE was lost would otherwise hold their
		// entries for good. Map iteration starts at a random entry.
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
		c.evicted.Add(1)
	}
	c.entries[ev.Key] = since{bootNS: ev.BootNS, state: ev.NewState}
}

// isBirth reports whether a transition starts a socket's life: from CLOSE,
// or a passive child's from LISTEN, as it is cloned from its listener.
func isBirth(old, new events.State) bool {
	return old == events.StateClose || (old == events.StateListen && new == events.StateSynRecv)
}
