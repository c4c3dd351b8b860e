package tracer

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
)

// Offsets in struct inet_diag_msg past those in peers.go.
const (
	tcpListen      = 10
	idiagOffRqueue = 56 // a listener's accept queue now
	idiagOffWqueue = 60 // and its limit
	idiagOffInode  = 68
	// Attributes: INET_DIAG_SKMEMINFO (asked for) holds sk_meminfo, whose
	// SK_MEMINFO_DROPS is the socket's drop count; INET_DIAG_CGROUP_ID
	// (Linux 5.9+, always sent) the cgroup v2 id of the socket's creator.
	diagExtMemInfo   = 7
	skMemInfoDrops   = unix.SK_MEMINFO_DROPS
	diagAttrCgroupID = 21
	listenersMaxAge  = time.Second
)

// ListListeners lists the TCP listening sockets of a network namespace
// (netns 0: every one in use on the node), by namespace, with sock_diag as
// ss -ltnm does: address, inode, accept queue and its limit, drops and
// cgroup (Owners empty).
// Namespaces it cannot read are reported in the error.
func ListListeners(netns uint32) (map[uint32][]events.Listener, error) {
	nss := openNetworkNamespaces(uint64(netns))
	if netns != 0 && len(nss) == 0 {
		return nil, fmt.Errorf("network namespace %d not found", netns)
	}
	byNS := make(map[uint32][]events.Listener, len(nss))
	var errs []error
	for _, ns := range nss {
		ls, err := listenersIn(ns)
		ns.file.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("listeners in network namespace %d: %w", ns.ino, err))
		}
		byNS[uint32(ns.ino)] = ls
	}
	return byNS, oneline.Join(errs...)
}

func listenersIn(ns namespace) ([]events.Listener, error) {
	fd := -1
	if err := inNetNS(ns, func() (err error) { fd, err = sockDiagOpen(); return err }); err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var ls []events.Listener
	var errs []error
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := sockDiagDump(fd, family, 1<<tcpListen, 1<<(diagExtMemInfo-1), func(b []byte) {
			if len(b) < inetDiagMsgSize {
				return
			}
			var ev events.Event
			if setAddrs(&ev, uint16(b[idiagOffFamily]), b[idiagOffSrc:idiagOffSrc+16], b[idiagOffDst:idiagOffDst+16]) != nil {
				return
			}
			ne := binary.NativeEndian
			l := events.Listener{
				Local: netip.AddrPortFrom(ev.LocalAddr, binary.BigEndian.Uint16(b[idiagOffSport:])),
				Inode: uint64(ne.Uint32(b[idiagOffInode:])), Queue: ne.Uint32(b[idiagOffRqueue:]), Backlog: ne.Uint32(b[idiagOffWqueue:]),
			}
			diagAttrs(b, func(typ uint16, v []byte) {
				switch typ {
				case diagExtMemInfo:
					// A listener's sk_drops: what tcp_listendrop counts, the
					// SYNs and handshakes dropped because a queue was full
					// (the node's ListenDrops, for this listener).
					if len(v) >= (skMemInfoDrops+1)*4 {
						l.Drops = uint64(ne.Uint32(v[skMemInfoDrops*4:]))
					}
				case diagAttrCgroupID:
					if len(v) >= 8 {
						l.CgroupID = ne.Uint64(v)
					}
				}
			})
			ls = append(ls, l)
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("dump listening sockets: %w", err))
		}
	}
	return ls, oneline.Join(errs...)
}

// FindListener returns the listener among ls that a socket with local
// address local was accepted from, or waits in the queue of: the same
// port, on that address or on any (0.0.0.0, or :: which takes IPv4 too).
func FindListener(ls []events.Listener, local netip.AddrPort) (events.Listener, bool) {
	var wildcard *events.Listener
	a := local.Addr().Unmap()
	for i := range ls {
		l := &ls[i]
		if l.Local.Port() != local.Port() {
			continue
		}
		la := l.Local.Addr().Unmap()
		switch {
		case la == a:
			return *l, true
		case la.IsUnspecified() && (la.Is4() == a.Is4() || !la.Is4()) && wildcard == nil:
			wildcard = l
		}
	}
	if wildcard != nil {
		return *wildcard, true
	}
	return events.Listener{}, false
}

// listenerCache keeps each namespace's listeners for a second: a leak of
// thousands of queued sockets asks for the same listener each time.
type listenerCache struct {
	mu   sync.Mutex
	byNS map[uint32]listenerList
}

type listenerList struct {
	at time.Time
	ls []events.Listener
}

// Listener finds the listening socket a socket that no file refers to
// waits in (its accept queue), for a stuck report (pipeline).
func (t *Tracer) Listener(netns uint32, local netip.AddrPort) (events.Listener, bool) {
	c := &t.listeners
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.byNS[netns]
	if !ok || time.Since(l.at) > listenersMaxAge {
		byNS, err := ListListeners(netns)
		ls := byNS[netns]
		if err != nil {
			t.cfg.Logger.Debug("list listening sockets", "netns", netns, "error", err)
		}
		if c.byNS == nil || len(c.byNS) > 1024 {
			c.byNS = make(map[uint32]listenerList)
		}
		l = listenerList{time.Now(), ls}
		c.byNS[netns] = l
	}
	return FindListener(l.ls, local)
}

// listeningCache is the last Listening answer: the metrics' scrape, the
// drop watch and the leak report's samples each ask, and within a second
// one listing answers for all.
type listeningCache struct {
	mu   sync.Mutex
	at   time.Time
	byNS map[uint32][]events.Listener
	err  error
}

// Listening lists the listening sockets the tracer's selection covers
// (its network namespace and ports, when set), by network namespace: for
// the accept-queue metrics, the drop watch and the leak report. The
// answer is at most a second old and shared: callers must not modify it.
func (t *Tracer) Listening() (map[uint32][]events.Listener, error) {
	c := &t.listening
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < listenersMaxAge {
		return c.byNS, c.err
	}
	byNS, err := ListListeners(t.cfg.NetNS)
	if len(t.cfg.Ports) > 0 {
		for ns, ls := range byNS {
			byNS[ns] = slices.DeleteFunc(ls, func(l events.Listener) bool { return !slices.Contains(t.cfg.Ports, l.Local.Port()) })
		}
	}
	c.at, c.byNS, c.err = time.Now(), byNS, err
	return byNS, err
}
