package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
)

// Offsets of struct event (bpf/tcptrace.h). decode_test.go checks them
// against the bpf2go-generated type; decoding by hand avoids reflection.
const (
	offTS       = 0
	offSkaddr   = 8
	offCookie   = 16
	offAux      = 24
	offNetns    = 32
	offPID      = 36
	offSaddr    = 40
	offDaddr    = 56
	offComm     = 72
	offFamily   = 88
	offSport    = 90
	offDport    = 92
	offKind     = 94
	offOldState = 95
	offNewState = 96
	offFlags    = 97
	offDir      = 98
	offSkErr    = 99
	offXflags   = 100
	offIno      = 104
	offCgroupID = 112
	eventSize   = 120
)

// Values of enum event_kind, event_flag (bpf/tcptrace.h).
const (
	evTransition = 1
	evCWEnter    = 2
	evCWLeave    = 3
	evSnapshot   = 4
	evAcceptFail = 5

	flagAuxValid   = 1 << 0
	flagApp        = 1 << 1
	flagIndirect   = 1 << 2
	flagCookie     = 1 << 3
	flagTracked    = 1 << 4
	flagAgeUnknown = 1 << 5
	flagKnown      = 1 << 6
	flagExiting    = 1 << 7

	xflagPeerReset = 1 << 0 // enum event_xflag
)

// offEntryPeerReset is cw_entry.peer_reset's offset.
const offEntryPeerReset = 76

const (
	afInet  = 2
	afInet6 = 10
)

var errShortRecord = errors.New("short record")

// decoder turns ring-buffer records into events.
type decoder struct {
	clock bootclock.Clock
	// Keys the hash that stands in for the socket cookie where the kernel
	// cannot provide one, so kernel addresses never leave the process.
	seed maphash.Seed
}

func newDecoder(clock bootclock.Clock) *decoder {
	return &decoder{clock: clock, seed: maphash.MakeSeed()}
}

// sockID is the id events give a socket: its cookie, or a keyed hash of
// its kernel address.
func (d *decoder) sockID(key uint64, hasCookie bool, cookie uint64) uint64 {
	if hasCookie {
		return cookie
	}
	return maphash.Comparable(d.seed, key)
}

// decode fills ev from one record. It never panics on malformed input.
func (d *decoder) decode(b []byte, ev *events.Event) error {
	if len(b) < eventSize {
		return fmt.Errorf("%w: %d bytes, want %d", errShortRecord, len(b), eventSize)
	}
	le := binary.LittleEndian
	*ev = events.Event{}

	flags := b[offFlags]
	ts := int64(le.Uint64(b[offTS:]))
	ev.Time = d.clock.Wall(ts)
	ev.BootNS = ts
	ev.Key = le.Uint64(b[offSkaddr:])
	ev.Sock = d.sockID(ev.Key, flags&flagCookie != 0, le.Uint64(b[offCookie:]))
	ev.NetNS = le.Uint32(b[offNetns:])
	ev.Inode = le.Uint64(b[offIno:])
	ev.CgroupID = le.Uint64(b[offCgroupID:])
	if d := events.Direction(b[offDir]); d == events.DirInbound || d == events.DirOutbound {
		ev.Dir = d
	}
	task := events.Task{PID: le.Uint32(b[offPID:])}
	copy(task.Comm[:], b[offComm:offComm+16])

	if err := setAddrs(ev, le.Uint16(b[offFamily:]), b[offSaddr:offSaddr+16], b[offDaddr:offDaddr+16]); err != nil {
		return err
	}
	ev.LocalPort = le.Uint16(b[offSport:])
	ev.RemotePort = le.Uint16(b[offDport:])
	ev.OldState = events.State(b[offOldState])
	ev.NewState = events.State(b[offNewState])
	aux := int64(le.Uint64(b[offAux:]))
	auxValid := flags&flagAuxValid != 0

	switch b[offKind] {
	case evTransition:
		ev.Kind = events.KindTransition
		ev.Task = task // PrevStateNS: see stateClock
	case evCWEnter, evSnapshot:
		// A snapshot socket was already in CLOSE_WAIT: its age counts from
		// first sight, now or when a listing first found it.
		ev.Kind = events.KindCloseWait
		ev.FinBootNS = ts
		ev.AgeKnown = b[offKind] == evCWEnter
		if b[offKind] == evSnapshot && auxValid && aux > 0 && aux <= ts {
			ev.FinBootNS = aux
			ev.AgeKnown = flags&flagAgeUnknown == 0
		}
		ev.KernelTracked = flags&flagTracked != 0
	case evCWLeave:
		if ev.NewState != events.StateLastAck && ev.NewState != events.StateClose {
			return fmt.Errorf("CLOSE_WAIT exit to %v", ev.NewState)
		}
		ev.Kind = events.KindAbort
		if flags&flagApp != 0 {
			ev.Kind = events.KindAppClose
			ev.PeerReset = b[offXflags]&xflagPeerReset != 0
			// When the CLOSE_WAIT exit itself was missed, the task that ran
			// the later transition is not the closer.
			if flags&flagIndirect == 0 {
				ev.Closer, ev.HasCloser = task, true
				ev.ClosedByExit = flags&flagExiting != 0
			}
		} else {
			ev.Cause = events.AbortCauseOf(b[offSkErr])
		}
		if auxValid && aux > 0 && aux <= ts {
			ev.FinBootNS = aux
			ev.AgeNS, ev.AgeKnown = ts-aux, flags&flagAgeUnknown == 0
		}
	case evAcceptFail:
		ev.Kind = events.KindAcceptFailed
		ev.Task = task
		ev.Dir = events.DirInbound
		ev.Reason = acceptReason(b[offSkErr])
	default:
		return fmt.Errorf("unknown record kind %d", b[offKind])
	}
	return nil
}

// setAddrs sets the family and addresses of ev from the kernel's 16-byte
// address fields, the first 4 bytes used for IPv4.
func setAddrs(ev *events.Event, family uint16, saddr, daddr []byte) error {
	switch family {
	case afInet:
		ev.Family = events.FamilyIPv4
		ev.LocalAddr = netip.AddrFrom4([4]byte(saddr[:4]))
		ev.RemoteAddr = netip.AddrFrom4([4]byte(daddr[:4]))
	case afInet6:
		ev.Family = events.FamilyIPv6
		ev.LocalAddr = netip.AddrFrom16([16]byte(saddr[:16]))
		ev.RemoteAddr = netip.AddrFrom16([16]byte(daddr[:16]))
		unmapIPv4(ev)
	default:
		return fmt.Errorf("unknown address family %d", family)
	}
	return nil
}

// unmapIPv4 reports a dual-stack IPv6 socket carrying IPv4 as IPv4. Both
// addresses change together so an event never mixes families: each must
// be v4-mapped or unspecified (not yet known), and one v4-mapped.
func unmapIPv4(ev *events.Event) {
	l, r := ev.LocalAddr, ev.RemoteAddr
	mappedOrUnset := func(a netip.Addr) bool { return a.Is4In6() || a.IsUnspecified() }
	if !mappedOrUnset(l) || !mappedOrUnset(r) || (!l.Is4In6() && !r.Is4In6()) {
		return
	}
	v4 := func(a netip.Addr) netip.Addr {
		if a.IsUnspecified() {
			return netip.IPv4Unspecified()
		}
		return a.Unmap()
	}
	ev.Family, ev.LocalAddr, ev.RemoteAddr = events.FamilyIPv4, v4(l), v4(r)
}
