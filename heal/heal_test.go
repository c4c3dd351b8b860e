package heal

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/tracer"
	"github.com/tcptrace/tcptrace/track"
)

// sock is a tracked socket: id, port, holder, cgroup, FIN time.
func sock(id uint64, port uint16, pid int, comm string, cg uint64, fin int64) track.Info {
	return track.Info{
		Sock: id, Family: events.FamilyIPv4, LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: port,
		RemoteAddr: netip.MustParseAddr("10.0.0.2"), RemotePort: uint16(40000 + id), NetNS: 1, CgroupID: cg,
		FinBootNS: fin, AgeKnown: true, Stuck: true, Owners: []events.Owner{{Process: &events.Process{PID: pid, Comm: comm}, FD: 3}},
	}
}

// The selectors, all of which must match; the age; the oldest first; a
// socket acted on once; what the destroyer answers becomes the event.
func TestHealSelectsAndReports(t *testing.T) {
	boot := int64(1000e9)
	socks := []track.Info{
		sock(1, 5984, 10, "beam.smp", 7, boot-700e9), // old enough, all match
		sock(2, 5984, 10, "beam.smp", 7, boot-900e9), // older: first
		sock(3, 5984, 10, "beam.smp", 7, boot-100e9), // too young
		sock(4, 8080, 10, "beam.smp", 7, boot-900e9), // another port
		sock(5, 5984, 11, "beam.smp", 7, boot-900e9), // another process
		sock(6, 5984, 10, "beam.smp", 8, boot-900e9), // another cgroup
		sock(7, 5984, 10, "beam.smp", 7, boot-800e9), // left CLOSE-WAIT meanwhile
	}
	var asked []uint64
	h := New(Config{
		After: 10 * time.Minute, Rate: 1000, Method: "kfunc", Cookies: true,
		Select: Selector{Ports: map[uint16]bool{5984: true}, PIDs: map[int]bool{10: true}, Comms: map[string]bool{"beam.smp": true}, Cgroup: "/kubepods/pod-a"},
		CgroupPath: func(id uint64) (string, bool) {
			return map[uint64]string{7: "/kubepods/pod-a/ctr", 8: "/kubepods/pod-ab"}[id], true
		},
		BootNow: func() int64 { return boot },
		Destroy: func(ts []tracer.CloseWaitSocket) (map[uint64]tracer.DestroyResult, error) {
			r := map[uint64]tracer.DestroyResult{}
			for _, s := range ts {
				asked = append(asked, s.Cookie)
				r[s.Cookie] = tracer.Destroyed
				if s.Cookie == 7 {
					r[s.Cookie] = tracer.LeftCloseWait
				}
			}
			return r, nil
		},
	})
	evs := h.Heal(slices.Values(socks))
	if !slices.Equal(asked, []uint64{2, 7, 1}) {
		t.Errorf("asked to destroy %v, want 2, 7, 1 (oldest first, selected only)", asked)
	}
	if len(evs) != 3 || evs[0].Kind != events.KindDestroyed || evs[0].Reason != Reason || evs[0].Method != "kfunc" ||
		evs[0].AgeNS != 900e9 || evs[1].Kind != events.KindNotDestroyed || evs[1].Reason != "left_close_wait" {
		t.Errorf("events %+v", evs)
	}
	if evs := h.Heal(slices.Values(socks)); len(evs) != 0 {
		t.Errorf("acted twice on the same sockets: %+v", evs)
	}
}

// The rate: a call destroys at most what the limiter allows; the rest
// wait for later calls.
func TestHealRate(t *testing.T) {
	boot := int64(1000e9)
	var socks []track.Info
	for i := range 5 {
		socks = append(socks, sock(uint64(i+1), 5984, 10, "x", 7, boot-int64(i+1)*1e12/1000))
	}
	n := 0
	h := New(Config{
		After: time.Second, Rate: 0.001, Cookies: true, Select: Selector{Ports: map[uint16]bool{5984: true}},
		BootNow: func() int64 { return boot },
		Destroy: func(ts []tracer.CloseWaitSocket) (map[uint64]tracer.DestroyResult, error) {
			n += len(ts)
			return map[uint64]tracer.DestroyResult{ts[0].Cookie: tracer.Destroyed}, nil
		},
	})
	h.Heal(slices.Values(socks))
	h.Heal(slices.Values(socks))
	if n != 1 {
		t.Errorf("%d destroyed at 0.001/s in two calls at once, want 1 (the burst)", n)
	}
	if h.Interval() != time.Second {
		t.Errorf("interval %v at a slow rate, want 1s", h.Interval())
	}
	if got := New(Config{Rate: 50}).Interval(); got != 100*time.Millisecond {
		t.Errorf("interval %v at 50/s, want 100ms", got)
	}
}
