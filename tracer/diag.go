package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
)

// Diagnosis is what the kernel says of a socket in CLOSE-WAIT, through
// sock_diag (INET_DIAG with tcp_info, as ss -ti reads it).
type Diagnosis struct {
	// ReadEOF: the application has read the peer's FIN (end of file).
	ReadEOF bool
	// UnreadBytes: data from the peer not yet read; 0 when ReadEOF.
	UnreadBytes uint64
	// SinceSend and SinceRecv: time since the socket last sent data and
	// since data last arrived (or since the connection was established,
	// if none was), in milliseconds (tcp_info's last_data_sent and
	// last_data_recv).
	SinceSend, SinceRecv time.Duration
}

// Diagnose asks the kernel about one socket in CLOSE-WAIT: the socket of
// sock, with the given cookie (0: match the addresses only), in the network
// namespace of the thread that opened the sock_diag socket fd (see
// sockDiagOpen). It fails with ENOENT when no such socket exists, and with
// errNotCloseWait when it is no longer in CLOSE-WAIT.
//
// The receive queue that sock_diag reports (idiag_rqueue) is rcv_nxt -
// copied_seq: it counts the FIN's sequence number until the application
// reads end of file, so 0 means EOF was read, and n > 0 means n-1 bytes of
// data wait before the FIN.
func diagnose(fd int, s *CloseWaitSocket) (Diagnosis, error) {
	var d Diagnosis
	var found, info bool
	err := sockDiagInfo(fd, s, func(b []byte) error {
		if len(b) < inetDiagMsgSize {
			return fmt.Errorf("short inet_diag_msg: %d bytes", len(b))
		}
		ne := binary.NativeEndian
		if b[1] != tcpCloseWait {
			return errNotCloseWait
		}
		if s.Inode != 0 && uint64(ne.Uint32(b[idiagOffInode:])) != s.Inode {
			return errNotCloseWait // another socket at these addresses
		}
		found = true
		rqueue := ne.Uint32(b[idiagOffRqueue:])
		d.ReadEOF = rqueue == 0
		if rqueue > 0 {
			d.UnreadBytes = uint64(rqueue - 1)
		}
		diagAttrs(b, func(typ uint16, ti []byte) {
			if typ == diagExtInfo && len(ti) >= tcpiLastDataRecv+4 {
				d.SinceSend = time.Duration(ne.Uint32(ti[tcpiLastDataSent:])) * time.Millisecond
				d.SinceRecv = time.Duration(ne.Uint32(ti[tcpiLastDataRecv:])) * time.Millisecond
				info = true
			}
		})
		return nil
	})
	switch {
	case err != nil:
		return Diagnosis{}, err
	case !found:
		return Diagnosis{}, errors.New("no answer")
	case !info:
		return Diagnosis{}, errors.New("no tcp_info in the answer")
	}
	return d, nil
}

var errNotCloseWait = errors.New("not in CLOSE-WAIT")

// diagAttrs calls fn with the type and payload of each netlink attribute
// after the inet_diag_msg of b, up to the first malformed one.
func diagAttrs(b []byte, fn func(typ uint16, v []byte)) {
	ne := binary.NativeEndian
	for a := b[min(inetDiagMsgSize, len(b)):]; len(a) >= unix.SizeofNlAttr; {
		l := int(ne.Uint16(a[0:]))
		if l < unix.SizeofNlAttr || l > len(a) {
			return
		}
		fn(ne.Uint16(a[2:])&nlaTypeMask, a[unix.SizeofNlAttr:l])
		a = a[min((l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1), len(a)):]
	}
}

// INET_DIAG_INFO (linux/inet_diag.h), an attribute's type bits, and the
// offsets in struct tcp_info of the times since data was last sent and
// received.
const (
	diagExtInfo      = 2
	nlaTypeMask      = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
	tcpiLastDataSent = int(unsafe.Offsetof(unix.TCPInfo{}.Last_data_sent))
	tcpiLastDataRecv = int(unsafe.Offsetof(unix.TCPInfo{}.Last_data_recv))
)

// sockDiagInfo is sockDiagRequest's SOCK_DIAG_BY_FAMILY get, asking for
// tcp_info too: the cookie, unless 0, must match.
func sockDiagInfo(fd int, s *CloseWaitSocket, reply func([]byte) error) error {
	answered := false
	err := sockDiagRequestExt(fd, unix.SOCK_DIAG_BY_FAMILY, s, s.Cookie != 0, 1<<(diagExtInfo-1), func(b []byte) error {
		answered = true
		return reply(b)
	})
	if err == nil && !answered {
		return errors.New("acknowledged without an answer")
	}
	return err
}

// diagTimeout bounds the wait for sock_diag's answer. The kernel answers
// before sendto returns; this is a safeguard for the event loop.
const diagTimeout = 100 * time.Millisecond

// maxDiagSockets bounds the sock_diag sockets a Diagnoser keeps open, one
// per network namespace.
const maxDiagSockets = 64

// Diagnoser reads why stuck sockets stay in CLOSE-WAIT (see Diagnosis),
// one sock_diag round trip per socket, in the socket's network namespace.
// It keeps a sock_diag socket per namespace between calls, until Release:
// call it after each batch, as an open socket keeps its namespace alive.
// Not safe for concurrent use.
type Diagnoser struct {
	cookies bool
	own     uint64
	socks   map[uint32]int    // by namespace inode; -1: could not be entered
	paths   map[uint64]string // namespace inode to a path, found once per batch
}

// NewDiagnoser returns a Diagnoser. cookies says the sock ids of the
// events it is given are socket cookies (Tracer.SocketCookie); otherwise
// sockets are matched by their addresses only.
func NewDiagnoser(cookies bool) *Diagnoser {
	return &Diagnoser{cookies: cookies, own: ownNetNS(), socks: make(map[uint32]int)}
}

// Diagnoser returns functions the pipeline uses on stuck reports:
// diagnose sets an event's diagnosis fields when the kernel answers (they
// stay unset otherwise: the socket is gone or its namespace could not be
// entered), release closes the sockets kept between calls.
func (t *Tracer) Diagnoser() (diagnose func(ev *events.Event), release func()) {
	d := NewDiagnoser(t.cookie)
	return d.Event, d.Release
}

// Event sets ev's diagnosis fields (DiagKnown and the rest) when the
// kernel answers about its socket.
func (d *Diagnoser) Event(ev *events.Event) {
	s := CloseWaitSocket{
		NetNS: ev.NetNS, Inode: ev.Inode, Family: ev.Family,
		Local:  netip.AddrPortFrom(ev.LocalAddr, ev.LocalPort),
		Remote: netip.AddrPortFrom(ev.RemoteAddr, ev.RemotePort),
	}
	if d.cookies {
		s.Cookie = ev.Sock
	}
	diag, err := d.Diagnose(&s)
	if err != nil {
		return
	}
	ev.DiagKnown, ev.ReadEOF, ev.UnreadBytes = true, diag.ReadEOF, diag.UnreadBytes
	ev.SinceSendNS, ev.SinceRecvNS = diag.SinceSend.Nanoseconds(), diag.SinceRecv.Nanoseconds()
	ev.Peer = d.peer(&s)
}

// peer finds the other end of a connection that stays on this host: in
// the socket's network namespace, with the addresses swapped. Only for a
// loopback peer or one at the socket's own address: a remote one cannot
// be there, and the lookup would cost a round trip for nothing.
func (d *Diagnoser) peer(s *CloseWaitSocket) *events.PeerSocket {
	ra := s.Remote.Addr().Unmap()
	if !ra.IsLoopback() && ra != s.Local.Addr().Unmap() {
		return nil
	}
	fd, err := d.socket(s.NetNS)
	if err != nil {
		return nil
	}
	swapped := CloseWaitSocket{NetNS: s.NetNS, Family: s.Family, Local: s.Remote, Remote: s.Local}
	var p *events.PeerSocket
	err = sockDiagRequestExt(fd, unix.SOCK_DIAG_BY_FAMILY, &swapped, false, 0, func(b []byte) error {
		if len(b) < inetDiagMsgSize {
			return fmt.Errorf("short inet_diag_msg: %d bytes", len(b))
		}
		p = &events.PeerSocket{Local: s.Remote, State: events.State(b[1]), Inode: uint64(binary.NativeEndian.Uint32(b[idiagOffInode:]))}
		return nil
	})
	if err != nil && !errors.Is(err, unix.ENOENT) {
		unix.Close(fd)
		delete(d.socks, s.NetNS)
	}
	return p
}

// Diagnose asks the kernel about a socket in CLOSE-WAIT, by its cookie
// (unless 0) and addresses, in its network namespace (NetNS; 0: ours).
func (d *Diagnoser) Diagnose(s *CloseWaitSocket) (Diagnosis, error) {
	fd, err := d.socket(s.NetNS)
	if err != nil {
		return Diagnosis{}, err
	}
	diag, err := diagnose(fd, s)
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, errNotCloseWait) {
		// The socket may be out of step (an answer timed out): start over.
		unix.Close(fd)
		delete(d.socks, s.NetNS)
	}
	return diag, err
}

// socket returns the sock_diag socket of a network namespace, opened on
// first use.
func (d *Diagnoser) socket(netns uint32) (int, error) {
	if fd, ok := d.socks[netns]; ok {
		if fd < 0 {
			return -1, fmt.Errorf("network namespace %d could not be entered", netns)
		}
		return fd, nil
	}
	if len(d.socks) >= maxDiagSockets {
		for ns, fd := range d.socks {
			if fd >= 0 {
				unix.Close(fd)
			}
			delete(d.socks, ns)
			break
		}
	}
	fd, err := d.open(uint64(netns))
	if err != nil {
		d.socks[netns] = -1
		return -1, fmt.Errorf("network namespace %d: %w", netns, err)
	}
	d.socks[netns] = fd
	return fd, nil
}

func (d *Diagnoser) open(netns uint64) (int, error) {
	if netns == 0 || netns == d.own {
		return openDiagSocket()
	}
	if d.paths == nil {
		d.paths = networkNamespacePaths()
	}
	path, ok := d.paths[netns]
	if !ok {
		return -1, errors.New("not found")
	}
	f, err := os.Open(path)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	var st unix.Stat_t
	var fs unix.Statfs_t
	if unix.Fstat(int(f.Fd()), &st) != nil || st.Ino != netns ||
		unix.Fstatfs(int(f.Fd()), &fs) != nil || fs.Type != unix.NSFS_MAGIC {
		return -1, errors.New("not found") // its process exited meanwhile
	}
	fd := -1
	err = inNetNS(namespace{file: f, ino: netns}, func() error {
		var err error
		fd, err = openDiagSocket()
		return err
	})
	return fd, err
}

func openDiagSocket() (int, error) {
	fd, err := sockDiagOpen()
	if err != nil {
		return -1, err
	}
	tv := unix.NsecToTimeval(diagTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// networkNamespacePaths maps each network namespace in use to a path that
// opens it, from the same places openNetworkNamespaces looks, with a stat
// per place and no file opened.
func networkNamespacePaths() map[uint64]string {
	candidates := networkNamespaceCandidates()
	paths := make(map[uint64]string)
	for _, p := range candidates {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil {
			continue
		}
		if _, ok := paths[st.Ino]; !ok {
			paths[st.Ino] = p
		}
	}
	return paths
}

// Release closes the sock_diag sockets kept since the last Release and
// forgets which namespaces could not be entered.
func (d *Diagnoser) Release() {
	for ns, fd := range d.socks {
		if fd >= 0 {
			unix.Close(fd)
		}
		delete(d.socks, ns)
	}
	d.paths = nil
}
