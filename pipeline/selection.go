package pipeline

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// KindSet is a set of event kinds.
type KindSet uint16

// Has reports whether k is in the set.
func (s KindSet) Has(k events.Kind) bool { return s&(1<<k) != 0 }

// Kinds makes a set.
func Kinds(kinds ...events.Kind) KindSet {
	var s KindSet
	for _, k := range kinds {
		s |= 1 << k
	}
	return s
}

// closewaitKinds are the kinds closewait mode can write, in order.
var closewaitKinds = []events.Kind{events.KindCloseWait, events.KindStuck, events.KindAppClose, events.KindAbort, events.KindListenDrops,
	events.KindAcceptFailed, events.KindDestroyed, events.KindNotDestroyed, events.KindLost, events.KindSummary}

// AllKinds is every kind closewait mode writes.
var AllKinds = Kinds(closewaitKinds...)

// ParseKinds parses a comma-separated list of closewait event kinds.
func ParseKinds(list string) (KindSet, error) {
	var s KindSet
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		i := slices.IndexFunc(closewaitKinds, func(k events.Kind) bool { return k.String() == name })
		if i < 0 {
			names := make([]string, len(closewaitKinds))
			for j, k := range closewaitKinds {
				names[j] = k.String()
			}
			return 0, fmt.Errorf("unknown event kind %q (want one or more of %s)", name, strings.Join(names, ", "))
		}
		s |= 1 << closewaitKinds[i]
	}
	return s, nil
}

// Selection says which events a sink gets.
type Selection struct {
	// Kinds to pass; 0 passes every kind.
	Kinds KindSet
	// EverySocket passes close_wait and app_close for every socket (the
	// source must send them). Otherwise an app_close passes only when the
	// socket was reported stuck (its resolution) or closed MinLatency or
	// more after the FIN.
	EverySocket bool
	// MinLatency is the latency floor for app_close; 0 is off.
	MinLatency time.Duration
	// PIDs and Comms keep only sockets held by, or closed by, one of these
	// processes, as found in /proc: a socket with no known owner is not
	// passed. lost events always pass. Empty: no filter.
	PIDs  []int
	Comms []string
}

// Pass reports whether ev is selected.
func (s *Selection) Pass(ev *events.Event) bool {
	if s.Kinds != 0 && !s.Kinds.Has(ev.Kind) {
		return false
	}
	switch ev.Kind {
	case events.KindLost, events.KindSummary:
		return true
	case events.KindCloseWait:
		if !s.EverySocket {
			return false
		}
	case events.KindAppClose:
		if !s.EverySocket && !ev.WasStuck &&
			(s.MinLatency <= 0 || !ev.AgeKnown || ev.AgeNS < s.MinLatency.Nanoseconds()) {
			return false
		}
	}
	return s.ownerPasses(ev)
}

func (s *Selection) ownerPasses(ev *events.Event) bool {
	if len(s.PIDs) == 0 && len(s.Comms) == 0 {
		return true
	}
	match := func(pid int, comm string) bool {
		return slices.Contains(s.PIDs, pid) || slices.Contains(s.Comms, comm)
	}
	for _, o := range ev.Owners {
		if match(o.PID, o.Comm) {
			return true
		}
	}
	if ev.Listener != nil {
		// A queued socket's, or dropping listener's, culprit.
		for _, o := range ev.Listener.Owners {
			if match(o.PID, o.Comm) {
				return true
			}
		}
	}
	if ev.HasCloser && match(int(ev.Closer.PID), ev.Closer.Comm.String()) {
		return true
	}
	return (ev.Kind == events.KindTransition || ev.Kind == events.KindAcceptFailed) && match(int(ev.Task.PID), ev.Task.Comm.String())
}

// Filter passes to sink only the events sel selects. Status reports and
// flushes go through.
func Filter(sel Selection, sink Sink) Sink {
	return &filtered{sel: sel, Sink: sink}
}

type filtered struct {
	sel Selection
	Sink
}

func (f *filtered) Write(ev *events.Event) error {
	if !f.sel.Pass(ev) {
		return nil
	}
	return f.Sink.Write(ev)
}

func (f *filtered) WriteStatus(st *Status) error {
	if s, ok := f.Sink.(StatusSink); ok {
		return s.WriteStatus(st)
	}
	return nil
}
