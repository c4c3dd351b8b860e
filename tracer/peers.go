package tracer

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
)

// PeerSockets counts the sockets of one network namespace that wait on one
// remote endpoint: the other side of a leak. A socket in FIN_WAIT2 closed
// its side and the peer acknowledged it, but the peer never closes its
// own: if that peer is a server leaking sockets in CLOSE-WAIT, here are its
// clients. TIME_WAIT sockets closed first and are done; many of them
// against one endpoint are churn, not a leak.
type PeerSockets struct {
	NetNS    uint32 // network namespace inode
	Remote   netip.AddrPort
	FinWait2 int
	TimeWait int
	// OldestFinWait2 is how long the oldest FIN_WAIT2 socket has waited, 0
	// when unknown. For a socket its owner closed (an orphan, which the
	// kernel turns into a time-wait socket until tcp_fin_timeout) it is
	// tcp_fin_timeout less the time left on its timer; for a socket still
	// open (shut down for writing) it is how long the peer has sent nothing,
	// a lower bound when keepalive probes run.
	OldestFinWait2 time.Duration
}

// TCP states (the kernel's enum) and sock_diag constants.
const (
	tcpFinWait2 = 5
	tcpTimeWait = 6

	inetDiagInfo = 2 // INET_DIAG_INFO: struct tcp_info
	// Offsets in struct inet_diag_msg (linux/inet_diag.h).
	idiagOffFamily  = 0
	idiagOffState   = 1
	idiagOffSport   = 4
	idiagOffDport   = 6
	idiagOffSrc     = 8
	idiagOffDst     = 24
	idiagOffExpires = 52
)

// tcpInfoLastAckRecv is where struct tcp_info keeps tcpi_last_ack_recv (ms
// since the peer last sent anything).
const tcpInfoLastAckRecv = unsafe.Offsetof(unix.TCPInfo{}.Last_ack_recv)

// ListPeers counts the TCP sockets in FIN_WAIT2 and TIME_WAIT by remote
// endpoint in every network namespace of the node (netns 0), or in one,
// with sock_diag dumps (as ss does: no eBPF, any kernel with tcp_diag).
// Namespaces it cannot read are reported in the error; the others' counts
// are still returned, ordered by namespace, FIN_WAIT2 count (most first),
// TIME_WAIT count, then address.
//
// Dumping sockets needs no privilege; entering another network namespace
// needs CAP_SYS_ADMIN.
func ListPeers(netns uint32) ([]PeerSockets, error) {
	nss := openNetworkNamespaces(uint64(netns))
	if netns != 0 && len(nss) == 0 {
		return nil, fmt.Errorf("network namespace %d not found", netns)
	}
	var (
		peers []PeerSockets
		errs  []error
	)
	for _, ns := range nss {
		found, err := peersIn(ns)
		ns.file.Close()
		peers = append(peers, found...)
		if err != nil {
			errs = append(errs, fmt.Errorf("peers in network namespace %d: %w", ns.ino, err))
		}
	}
	slices.SortFunc(peers, func(a, b PeerSockets) int {
		return cmp.Or(cmp.Compare(a.NetNS, b.NetNS), cmp.Compare(b.FinWait2, a.FinWait2),
			cmp.Compare(b.TimeWait, a.TimeWait), a.Remote.Compare(b.Remote))
	})
	return peers, oneline.Join(errs...)
}

// peersIn dumps the FIN_WAIT2 and TIME_WAIT sockets of ns, IPv4 and IPv6.
func peersIn(ns namespace) ([]PeerSockets, error) {
	fd := -1
	var finTimeout time.Duration
	err := inNetNS(ns, func() error {
		var err error
		if fd, err = sockDiagOpen(); err != nil {
			return err
		}
		// Per namespace: /proc/sys/net is the calling thread's.
		finTimeout = readFinTimeout()
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)

	byRemote := make(map[netip.AddrPort]*PeerSockets)
	var errs []error
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		err := sockDiagDump(fd, family, 1<<tcpFinWait2|1<<tcpTimeWait, 1<<(inetDiagInfo-1), func(msg []byte) {
			remote, state, age, ok := decodePeerMsg(msg, finTimeout)
			if !ok {
				return
			}
			p := byRemote[remote]
			if p == nil {
				p = &PeerSockets{NetNS: uint32(ns.ino), Remote: remote}
				byRemote[remote] = p
			}
			switch state {
			case tcpFinWait2:
				p.FinWait2++
				p.OldestFinWait2 = max(p.OldestFinWait2, age)
			case tcpTimeWait:
				p.TimeWait++
			}
		})
		if err != nil {
			name := "IPv4"
			if family == unix.AF_INET6 {
				name = "IPv6"
			}
			if errors.Is(err, unix.ENOENT) {
				err = fmt.Errorf("%w (TCP sockets unknown to sock_diag: is the tcp_diag module loaded?)", err)
			}
			errs = append(errs, fmt.Errorf("dump %s TCP sockets: %w", name, err))
		}
	}
	peers := make([]PeerSockets, 0, len(byRemote))
	for _, p := range byRemote {
		peers = append(peers, *p)
	}
	return peers, oneline.Join(errs...)
}

// readFinTimeout reads net.ipv4.tcp_fin_timeout, 0 if unreadable.
func readFinTimeout() time.Duration {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_fin_timeout")
	if err != nil {
		return 0
	}
	s, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil || s <= 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

// decodePeerMsg decodes a struct inet_diag_msg and its attributes: the
// socket's remote endpoint, state (the time-wait socket's substate, as the
// kernel reports it) and, in FIN_WAIT2, how long it has waited (0 unknown).
func decodePeerMsg(b []byte, finTimeout time.Duration) (remote netip.AddrPort, state uint8, age time.Duration, ok bool) {
	if len(b) < inetDiagMsgSize {
		return netip.AddrPort{}, 0, 0, false
	}
	ne := binary.NativeEndian
	var ev events.Event
	if setAddrs(&ev, uint16(b[idiagOffFamily]), b[idiagOffSrc:idiagOffSrc+16], b[idiagOffDst:idiagOffDst+16]) != nil {
		return netip.AddrPort{}, 0, 0, false
	}
	remote = netip.AddrPortFrom(ev.RemoteAddr, binary.BigEndian.Uint16(b[idiagOffDport:]))
	state = b[idiagOffState]
	if state != tcpFinWait2 {
		return remote, state, 0, true
	}
	info := diagAttr(b[inetDiagMsgSize:], inetDiagInfo)
	switch {
	case info != nil && len(info) >= int(tcpInfoLastAckRecv)+4:
		// A full socket (time-wait sockets carry no tcp_info).
		age = time.Duration(ne.Uint32(info[tcpInfoLastAckRecv:])) * time.Millisecond
	case info == nil && finTimeout > 0:
		left := time.Duration(ne.Uint32(b[idiagOffExpires:])) * time.Millisecond
		if left <= finTimeout {
			age = finTimeout - left
		}
	}
	return remote, state, age, true
}

// diagAttr returns the payload of the first attribute of type typ in b (a
// sequence of struct rtattr), nil if there is none.
func diagAttr(b []byte, typ uint16) []byte {
	ne := binary.NativeEndian
	for len(b) >= unix.SizeofRtAttr {
		l := int(ne.Uint16(b[0:]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return nil
		}
		if ne.Uint16(b[2:]) == typ {
			return b[unix.SizeofRtAttr:l]
		}
		b = b[min((l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1), len(b)):]
	}
	return nil
}

// sockDiagDump dumps the TCP sockets of family whose state is in the
// states mask (a time-wait socket's substate counts), with the extensions
// asked for in ext; msg gets each struct inet_diag_msg and its attributes.
func sockDiagDump(fd int, family uint8, states uint32, ext uint8, msg func([]byte)) error {
	ne := binary.NativeEndian
	seq := sockDiagSeq.Add(1)
	req := make([]byte, nlmsgHdrSize+inetDiagReqV2Size)
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], seq)
	r := req[nlmsgHdrSize:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	r[2] = ext
	ne.PutUint32(r[4:], states)
	ne.PutUint32(r[8+40:], inetDiagNoCookie)
	ne.PutUint32(r[8+44:], inetDiagNoCookie)

	return sockDiagExchange(fd, req, 1<<16, func(typ uint16, payload []byte) (bool, error) {
		switch typ {
		case unix.NLMSG_DONE:
			// A dump that failed says why here (TCP unknown to sock_diag:
			// ENOENT), rather than in an NLMSG_ERROR.
			if len(payload) >= 4 {
				if errno := int32(ne.Uint32(payload)); errno < 0 {
					return true, unix.Errno(-errno)
				}
			}
			// An interrupted dump (NLM_F_DUMP_INTR) may have missed or
			// repeated sockets that came and went: fine for counts.
			return true, nil
		case unix.SOCK_DIAG_BY_FAMILY:
			msg(payload)
		}
		return false, nil
	})
}
