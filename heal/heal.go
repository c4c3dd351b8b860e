// Package heal is closewait's opt-in self-healing (--destroy-after): it
// destroys the tracked sockets that have been in CLOSE-WAIT longer than a
// policy allows, among those its selectors name, at a bounded rate. The
// application then sees an error on its next use of the socket (EPIPE or
// ECONNRESET on a write, end of file or ECONNRESET on a read) and its
// descriptor stays open until it closes it: the kernel's resources go,
// the descriptor does not.
//
// A socket is destroyed only if it is still in CLOSE-WAIT when the kernel
// destroys it (the Destroyer checks, under the socket lock where the
// bpf_sock_destroy kfunc is available): one the application closed
// between the decision and the destroy is left alone.
package heal

import (
	"cmp"
	"iter"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/time/rate"

	"github.com/tcptrace/tcptrace/cgroup"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/tracer"
	"github.com/tcptrace/tcptrace/track"
)

// Reason is the destroyed events' reason: the policy.
const Reason = "destroy_after"

// Selector says which sockets the policy may destroy: all given must
// match; at least one must be given (Empty).
type Selector struct {
	Ports map[uint16]bool // local or remote port
	PIDs  map[int]bool    // held by one of these processes
	Comms map[string]bool // held by a process of one of these names
	// Cgroup is a cgroup v2 path: the socket's cgroup is it or below it.
	Cgroup string
}

// Empty says no selector is set.
func (s Selector) Empty() bool {
	return len(s.Ports) == 0 && len(s.PIDs) == 0 && len(s.Comms) == 0 && s.Cgroup == ""
}

// Config sets up a Healer.
type Config struct {
	After  time.Duration // in CLOSE-WAIT at least this long
	Rate   float64       // destructions per second, at most
	DryRun bool          // report what would be destroyed, once per socket
	Select Selector
	// Destroy destroys sockets still in CLOSE-WAIT (a tracer.Destroyer's
	// Destroy); Method names how, for the events.
	Destroy func([]tracer.CloseWaitSocket) (map[uint64]tracer.DestroyResult, error)
	Method  string
	// Cookies: the tracked sockets' ids are the kernel's socket cookies.
	// Otherwise List finds a candidate's cookie by its addresses.
	Cookies bool
	List    func(netns uint32) ([]tracer.CloseWaitSocket, error)
	// CgroupPath names a cgroup v2 id (for Select.Cgroup).
	CgroupPath func(id uint64) (string, bool)
	// BootNow is CLOCK_BOOTTIME, the tracked sockets' clock; Now the wall
	// clock of the events.
	BootNow func() int64
	Now     func() time.Time
	Logger  *slog.Logger
}

// Healer applies the policy. Not safe for concurrent use: the pipeline's
// loop calls it.
type Healer struct {
	cfg Config
	lim *rate.Limiter
	// done: sockets acted on (destroyed, or reported in a dry run), until
	// the tracker lets them go.
	done map[uint64]bool
}

// New returns a Healer.
func New(cfg Config) *Healer {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Healer{cfg: cfg, done: make(map[uint64]bool)}
	// As many as the rate allows in one interval, so that a call each
	// Interval keeps up with the rate and a burst never exceeds it.
	burst := max(1, int(math.Ceil(cfg.Rate*h.Interval().Seconds())))
	h.lim = rate.NewLimiter(rate.Limit(cfg.Rate), burst)
	return h
}

// Interval is how often Heal should be called: a second, or the time one
// destruction takes at the rate, but not below 100 ms.
func (h *Healer) Interval() time.Duration {
	if h.cfg.Rate <= 0 {
		return time.Second
	}
	return min(time.Second, max(100*time.Millisecond, time.Duration(float64(time.Second)/h.cfg.Rate)))
}

// Heal destroys the tracked sockets past the policy's age that the
// selectors name, oldest first, as many as the rate allows now, and
// returns their destroyed (or not_destroyed) events.
func (h *Healer) Heal(socks iter.Seq[track.Info]) []events.Event {
	due := h.cfg.BootNow() - h.cfg.After.Nanoseconds()
	var cands []track.Info
	seen := make(map[uint64]bool, len(h.done))
	for info := range socks {
		seen[info.Sock] = true
		if h.done[info.Sock] || info.FinBootNS == 0 || info.FinBootNS > due || !h.selected(&info) {
			continue
		}
		cands = append(cands, info)
	}
	for s := range h.done {
		if !seen[s] {
			delete(h.done, s) // closed or destroyed: the tracker let it go
		}
	}
	if len(cands) == 0 {
		return nil
	}
	slices.SortFunc(cands, func(a, b track.Info) int { return cmp.Compare(a.FinBootNS, b.FinBootNS) })
	now, boot := h.cfg.Now(), h.cfg.BootNow()
	var evs []events.Event
	if h.cfg.DryRun {
		for i := range cands {
			c := &cands[i]
			h.done[c.Sock] = true
			ev := event(c, now, boot)
			ev.Kind, ev.Reason = events.KindNotDestroyed, "dry_run"
			evs = append(evs, ev)
		}
		return evs
	}
	n := 0
	for n < len(cands) && h.lim.Allow() {
		n++
	}
	cands = cands[:n]
	if n == 0 {
		return nil
	}
	targets, byCookie := h.targets(cands)
	var results map[uint64]tracer.DestroyResult
	if len(targets) > 0 {
		var err error
		if results, err = h.cfg.Destroy(targets); err != nil {
			h.cfg.Logger.Warn("--destroy-after: destroy", "error", err)
		}
	}
	for i := range cands {
		c := &cands[i]
		h.done[c.Sock] = true
		ev := event(c, now, boot)
		r := tracer.NotFound // not in the listing: gone
		if cookie, ok := byCookie[c.Sock]; ok {
			r = results[cookie]
		}
		if r == tracer.Destroyed {
			ev.Kind, ev.Method, ev.Reason = events.KindDestroyed, h.cfg.Method, Reason
		} else {
			ev.Kind, ev.Reason = events.KindNotDestroyed, r.Reason()
		}
		evs = append(evs, ev)
	}
	return evs
}

// targets makes the Destroyer's targets of the candidates, with their
// cookies: the tracked ids, or found by address in a listing. byCookie
// maps a tracked id to its cookie (absent: not found).
func (h *Healer) targets(cands []track.Info) ([]tracer.CloseWaitSocket, map[uint64]uint64) {
	byCookie := make(map[uint64]uint64, len(cands))
	targets := make([]tracer.CloseWaitSocket, 0, len(cands))
	type addrKey struct {
		netns         uint32
		local, remote netip.AddrPort
	}
	unmap := func(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a.Unmap(), p) }
	var listed map[addrKey]uint64
	if !h.cfg.Cookies {
		listed = make(map[addrKey]uint64)
		nss := make(map[uint32]bool)
		for _, c := range cands {
			nss[c.NetNS] = true
		}
		for ns := range nss {
			socks, err := h.cfg.List(ns)
			if err != nil {
				h.cfg.Logger.Warn("--destroy-after: list sockets in CLOSE-WAIT", "netns", ns, "error", err)
			}
			for _, s := range socks {
				listed[addrKey{s.NetNS, unmap(s.Local.Addr(), s.Local.Port()), unmap(s.Remote.Addr(), s.Remote.Port())}] = s.Cookie
			}
		}
	}
	for k := range cands {
		i := &cands[k]
		cookie := i.Sock
		if !h.cfg.Cookies {
			var ok bool
			if cookie, ok = listed[addrKey{i.NetNS, unmap(i.LocalAddr, i.LocalPort), unmap(i.RemoteAddr, i.RemotePort)}]; !ok {
				continue
			}
		}
		byCookie[i.Sock] = cookie
		targets = append(targets, tracer.CloseWaitSocket{
			Cookie: cookie, NetNS: i.NetNS, CgroupID: i.CgroupID, Family: i.Family,
			Local: netip.AddrPortFrom(i.LocalAddr, i.LocalPort), Remote: netip.AddrPortFrom(i.RemoteAddr, i.RemotePort),
		})
	}
	return targets, byCookie
}

func (h *Healer) selected(i *track.Info) bool {
	s := &h.cfg.Select
	if len(s.Ports) > 0 && !s.Ports[i.LocalPort] && !s.Ports[i.RemotePort] {
		return false
	}
	if len(s.PIDs) > 0 && !slices.ContainsFunc(i.Owners, func(o events.Owner) bool { return s.PIDs[o.PID] }) {
		return false
	}
	if len(s.Comms) > 0 && !slices.ContainsFunc(i.Owners, func(o events.Owner) bool { return s.Comms[o.Comm] }) {
		return false
	}
	if s.Cgroup != "" {
		p, ok := h.cfg.CgroupPath(i.CgroupID)
		if !ok || !cgroup.Within(p, s.Cgroup) {
			return false
		}
	}
	return true
}

// event is a tracked socket as a destroyed or not_destroyed event.
func event(i *track.Info, now time.Time, boot int64) events.Event {
	ev := events.Event{
		Time: now, Sock: i.Sock, Family: i.Family, LocalAddr: i.LocalAddr, LocalPort: i.LocalPort,
		RemoteAddr: i.RemoteAddr, RemotePort: i.RemotePort, NetNS: i.NetNS, CgroupID: i.CgroupID, Dir: i.Dir,
		AgeNS: boot - i.FinBootNS, AgeKnown: i.AgeKnown, Owners: i.Owners, OwnerSource: events.OwnerUnresolved,
	}
	if len(i.Owners) > 0 {
		ev.OwnerSource = events.OwnerProc
	}
	return ev
}
