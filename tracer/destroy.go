package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
)

// CloseWaitSocket is a socket in CLOSE-WAIT as a fresh listing finds it.
type CloseWaitSocket struct {
	Cookie        uint64 // the kernel's socket cookie: unique for the boot, never reused
	NetNS         uint32 // network namespace inode
	CgroupID      uint64 // cgroup v2 id of the socket (its creator's cgroup), 0 if unknown
	Inode         uint64 // socket inode, 0 while no file holds the socket
	UID           uint32 // the socket's owner (as ss shows it), in tcptrace's user namespace
	Family        events.Family
	Local, Remote netip.AddrPort
}

// The programs of bpf/destroy.bpf.c.
const (
	cwListProg  = "tcptrace_cw_list"
	destroyProg = "tcptrace_destroy"
)

// Offsets of struct cw_sock (bpf/destroy.bpf.c), checked against the
// bpf2go-generated type at compile time below.
const (
	cwOffCookie   = 0
	cwOffIno      = 8
	cwOffCgroupID = 16
	cwOffSaddr    = 24
	cwOffDaddr    = 40
	cwOffNetns    = 56
	cwOffUID      = 60
	cwOffFamily   = 64
	cwOffSport    = 66
	cwOffDport    = 68
	cwSockSize    = 72
)

// A constant index out of range does not compile: each offset above must
// be the generated type's.
var (
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.Cookie)-cwOffCookie]
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.Ino)-cwOffIno]
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.CgroupId)-cwOffCgroupID]
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.Saddr)-cwOffSaddr]
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.Daddr)-cwOffDaddr]
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.Netns)-cwOffNetns]
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.Uid)-cwOffUID]
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.Family)-cwOffFamily]
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.Sport)-cwOffSport]
	_ = [1]struct{}{}[unsafe.Offsetof(destroyCwSock{}.Dport)-cwOffDport]
	_ = [1]struct{}{}[unsafe.Sizeof(destroyCwSock{})-cwSockSize]
)

// tcpCloseWait is TCP_CLOSE_WAIT in the kernel's enum.
const tcpCloseWait = 8

// ListCloseWaitSockets lists the sockets in CLOSE-WAIT in every network
// namespace of the node (netns 0), or in one, with the iter/tcp program
// (Linux 5.9+). Namespaces it cannot enter are reported in the error; the
// others' sockets are still returned.
//
// Entering another network namespace needs CAP_SYS_ADMIN; loading the
// program CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN). Before Linux 5.12,
// where the program cannot ask for a socket's cookie, the cookies not yet
// generated are asked of sock_diag (NETLINK_SOCK_DIAG), which generates them.
func ListCloseWaitSockets(netns uint32) ([]CloseWaitSocket, error) {
	// The listing needs what tracing needs (kernel BTF for CO-RE): say so
	// as tracing does, rather than with a loader error.
	if err := checkKernel(); err != nil {
		return nil, err
	}
	coll, iter, helper, err := loadCWList()
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	defer iter.Close()

	if !helper {
		// Cookies come from sock_diag then: without it every socket
		// would look gone, and be left out without a word.
		if err := tcpDiagCheck(); err != nil {
			return nil, fmt.Errorf("the sockets' cookies, asked of sock_diag before Linux 5.12: %w", err)
		}
	}
	nss := openNetworkNamespaces(uint64(netns))
	if netns != 0 && len(nss) == 0 {
		return nil, fmt.Errorf("network namespace %d not found", netns)
	}
	var (
		socks []CloseWaitSocket
		errs  []error
	)
	seen := make(map[uint64]bool)
	for _, ns := range nss {
		found, err := cwListIn(ns, iter, !helper)
		ns.file.Close()
		for _, s := range found {
			if !seen[s.Cookie] {
				seen[s.Cookie] = true
				socks = append(socks, s)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("list sockets in network namespace %d: %w", ns.ino, err))
		}
	}
	return socks, oneline.Join(errs...)
}

// loadCWList loads and attaches the listing program; helper says whether
// it calls bpf_get_socket_cookie.
func loadCWList() (*ebpf.Collection, *link.Iter, bool, error) {
	memlockErr := removeMemlock()
	spec, err := loadDestroy()
	if err != nil {
		return nil, nil, false, fmt.Errorf("load eBPF object: %w", err)
	}
	var failures []error
	for _, helper := range []bool{true, false} {
		s := onlyProgram(spec, cwListProg)
		if err := s.Variables["use_cookie_helper"].Set(helper); err != nil {
			return nil, nil, false, fmt.Errorf("set use_cookie_helper: %w", err)
		}
		coll, iter, err := loadDestroyIter(s, cwListProg)
		if err == nil {
			return coll, iter, helper, nil
		}
		failures = append(failures, err)
	}
	return nil, nil, false, fmt.Errorf("%w: the CLOSE-WAIT listing (iter/tcp, Linux 5.9+): %w", ErrNoSnapshot, oneline.Join(append(failures, memlockErr)...))
}

// loadDestroyIter loads the only program of spec and attaches it as an
// iterator.
func loadDestroyIter(spec *ebpf.CollectionSpec, prog string) (*ebpf.Collection, *link.Iter, error) {
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, nil, shortVerifierError(err)
	}
	iter, err := link.AttachIter(link.IterOptions{Program: coll.Programs[prog]})
	if err != nil {
		coll.Close()
		return nil, nil, fmt.Errorf("attach %s: %w", spec.Programs[prog].SectionName, err)
	}
	return coll, iter, nil
}

// inNetNS runs fn on a thread in network namespace ns: an iter/tcp
// iterator lists the sockets of the namespace of the task that opens it,
// and a netlink socket talks to the namespace it was created in, so only
// the opening needs the namespace; reading can happen anywhere. Our own
// namespace needs no setns; another needs CAP_SYS_ADMIN.
func inNetNS(ns namespace, fn func() error) error {
	if ns.ino == ownNetNS() {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it exits with this goroutine rather
		// than serve other goroutines from another network namespace.
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.file.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns: %w", err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// cwListIn runs the listing in network namespace ns. resolve: the program
// read the cookie field, 0 for a socket whose cookie nothing asked for yet;
// those cookies are asked of sock_diag.
func cwListIn(ns namespace, iter *link.Iter, resolve bool) ([]CloseWaitSocket, error) {
	var rc io.ReadCloser
	diag := -1
	err := inNetNS(ns, func() error {
		var err error
		if resolve {
			if diag, err = sockDiagOpen(); err != nil {
				return err
			}
		}
		if rc, err = iter.Open(); err != nil {
			return fmt.Errorf("open iterator: %w", err)
		}
		return nil
	})
	if diag >= 0 {
		defer unix.Close(diag)
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()

	var socks []CloseWaitSocket
	var errs []error
	buf := make([]byte, 256*cwSockSize)
	n := 0
	for {
		m, err := rc.Read(buf[n:])
		n += m
		whole := n - n%cwSockSize
		for b := buf[:whole]; len(b) >= cwSockSize; b = b[cwSockSize:] {
			s, ok := decodeCWSock(b[:cwSockSize])
			if !ok {
				continue
			}
			if s.Cookie == 0 && resolve {
				if ok, err := resolveCookie(diag, &s); err != nil {
					errs = append(errs, err)
					continue
				} else if !ok {
					continue // left CLOSE-WAIT meanwhile
				}
			}
			socks = append(socks, s)
		}
		n = copy(buf, buf[whole:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read iterator: %w", err))
			break
		}
	}
	return socks, oneline.Join(errs...)
}

// decodeCWSock decodes a struct cw_sock. Addresses are decoded as events
// are: a dual-stack IPv6 socket carrying IPv4 is IPv4.
func decodeCWSock(b []byte) (CloseWaitSocket, bool) {
	le := binary.LittleEndian // the programs are built for little-endian targets only
	var ev events.Event
	if setAddrs(&ev, le.Uint16(b[cwOffFamily:]), b[cwOffSaddr:cwOffSaddr+16], b[cwOffDaddr:cwOffDaddr+16]) != nil {
		return CloseWaitSocket{}, false
	}
	return CloseWaitSocket{
		Cookie:   le.Uint64(b[cwOffCookie:]),
		NetNS:    le.Uint32(b[cwOffNetns:]),
		CgroupID: le.Uint64(b[cwOffCgroupID:]),
		Inode:    le.Uint64(b[cwOffIno:]),
		UID:      le.Uint32(b[cwOffUID:]),
		Family:   ev.Family,
		Local:    netip.AddrPortFrom(ev.LocalAddr, le.Uint16(b[cwOffSport:])),
		Remote:   netip.AddrPortFrom(ev.RemoteAddr, le.Uint16(b[cwOffDport:])),
	}, true
}

// resolveCookie asks sock_diag for the cookie of s, found without one: it
// generates it. false when the socket is no longer the one listed in
// CLOSE-WAIT.
func resolveCookie(diag int, s *CloseWaitSocket) (bool, error) {
	msg, err := sockDiagGet(diag, s, false)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("socket cookie of %s-%s: %w", s.Local, s.Remote, err)
	}
	if msg.state != tcpCloseWait || (s.Inode != 0 && uint64(msg.inode) != s.Inode) {
		return false, nil
	}
	s.Cookie = msg.cookie
	return true, nil
}

// DestroyResult says what happened to one target.
type DestroyResult int

const (
	// Destroyed: the socket was aborted, as ss -K does: the peer gets a
	// reset, the owner ECONNABORTED on its next write (a read returns end
	// of file, the peer's FIN having been received).
	Destroyed DestroyResult = iota
	// LeftCloseWait: the socket is no longer in CLOSE-WAIT (its owner
	// closed or shut it down meanwhile) and was left alone.
	LeftCloseWait
	// NotFound: no socket with that cookie: gone.
	NotFound
	// Failed: the socket could not be destroyed, or its namespace entered;
	// the error returned with the results says why.
	Failed
)

func (r DestroyResult) String() string {
	switch r {
	case Destroyed:
		return "destroyed"
	case LeftCloseWait:
		return "left CLOSE-WAIT"
	case NotFound:
		return "not found"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("DestroyResult(%d)", int(r))
}

// Reason is the not_destroyed event's reason for a target not Destroyed:
// left_close_wait, not_found, or "failed: " and what happened.
func (r DestroyResult) Reason() string {
	switch r {
	case LeftCloseWait:
		return "left_close_wait"
	case NotFound:
		return "not_found"
	}
	return "failed: " + r.String()
}

// The methods a Destroyer may use.
const (
	// DestroyKfunc: the bpf_sock_destroy kfunc, called from an iter/tcp
	// program holding the socket lock (Linux 6.5+; CAP_BPF and CAP_PERFMON,
	// or CAP_SYS_ADMIN). The state test and the destroy are atomic.
	DestroyKfunc = "kfunc"
	// DestroySockDiag: sock_diag's SOCK_DESTROY, as ss -K (Linux 4.5+ built
	// with CONFIG_INET_DIAG_DESTROY; CAP_NET_ADMIN).
	DestroySockDiag = "sock_diag"
)

// Destroyer destroys sockets by cookie, checking at destroy time that each
// is still the same socket (cookie) and still in CLOSE-WAIT.
type Destroyer struct {
	mu     sync.Mutex
	method string
	// kfunc
	coll             *ebpf.Collection
	iter             *link.Iter
	targets, results *ebpf.Map
}

// NewDestroyer probes: the bpf_sock_destroy kfunc from an iter/tcp program
// (Linux 6.5+), else the kernel's SOCK_DESTROY (sock_diag netlink, as ss
// -K; needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN). Method() names the
// one chosen ("kfunc" or "sock_diag"). When neither works, one clear error
// saying what is missing.
func NewDestroyer() (*Destroyer, error) {
	return NewDestroyerWith("")
}

// NewDestroyerWith is NewDestroyer with the method chosen: DestroyKfunc,
// DestroySockDiag, or "" (or "auto") to probe them in that order.
func NewDestroyerWith(method string) (*Destroyer, error) {
	switch method {
	case "", "auto":
		d, kerr := newKfuncDestroyer()
		if kerr == nil {
			return d, nil
		}
		d, derr := newSockDiagDestroyer()
		if derr == nil {
			return d, nil
		}
		return nil, fmt.Errorf("cannot destroy sockets: %w; %w", kerr, derr)
	case DestroyKfunc:
		return newKfuncDestroyer()
	case DestroySockDiag:
		return newSockDiagDestroyer()
	}
	return nil, fmt.Errorf("unknown destroy method %q (want %s, %s or auto)", method, DestroyKfunc, DestroySockDiag)
}

func newKfuncDestroyer() (*Destroyer, error) {
	memlockErr := removeMemlock()
	spec, err := loadDestroy()
	if err != nil {
		return nil, fmt.Errorf("load eBPF object: %w", err)
	}
	coll, iter, err := loadDestroyIter(onlyProgram(spec, destroyProg), destroyProg)
	if err != nil {
		switch {
		case errors.Is(err, ebpf.ErrNotSupported):
			err = fmt.Errorf("%w: %w (the kfunc needs Linux 6.5 or newer)", ErrUnsupportedKernel, err)
		case memlockErr != nil:
			err = oneline.Join(err, memlockErr)
		case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
			err = fmt.Errorf("%w: %w (needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)", ErrPrivilege, err)
		}
		return nil, fmt.Errorf("bpf_sock_destroy kfunc: %w", err)
	}
	return &Destroyer{method: DestroyKfunc, coll: coll, iter: iter,
		targets: coll.Maps["targets"], results: coll.Maps["results"]}, nil
}

func newSockDiagDestroyer() (*Destroyer, error) {
	if err := sockDiagProbe(); err != nil {
		return nil, fmt.Errorf("sock_diag SOCK_DESTROY: %w", err)
	}
	if !Capable(unix.CAP_NET_ADMIN) {
		return nil, fmt.Errorf("sock_diag SOCK_DESTROY: %w: needs CAP_NET_ADMIN", ErrPrivilege)
	}
	return &Destroyer{method: DestroySockDiag}, nil
}

// Method names the method in use: "kfunc" or "sock_diag".
func (d *Destroyer) Method() string { return d.method }

// Close releases the kernel objects.
func (d *Destroyer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if d.iter != nil {
		errs = append(errs, d.iter.Close())
		d.iter = nil
	}
	if d.coll != nil {
		d.coll.Close()
		d.coll = nil
	}
	return oneline.Join(errs...)
}

// Destroy destroys the given sockets, entering each network namespace that
// has one (NetNS 0: ours); results by cookie, and per-socket errors in the
// map's value semantics (Failed) plus an overall error for namespaces it
// could not enter, which also says why each Failed socket failed.
//
// A target is destroyed only if a socket with its cookie is in CLOSE-WAIT
// at that moment. With the kfunc, the test and the destroy happen under
// the socket lock. With sock_diag, the state is read first (a
// SOCK_DIAG_BY_FAMILY get matching the cookie) and the socket destroyed
// right after: the kernel does not check the state on SOCK_DESTROY, so a
// socket whose owner closes it between the two (microseconds) is aborted
// in LAST-ACK rather than closed gracefully, its pending data reset. The
// cookie check makes sure it is never another socket. sock_diag finds
// sockets by address, so it cannot find a socket bound to a device
// (SO_BINDTODEVICE): NotFound.
func (d *Destroyer) Destroy(targets []CloseWaitSocket) (map[uint64]DestroyResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	results := make(map[uint64]DestroyResult, len(targets))
	var errs []error
	if d.method == DestroyKfunc && d.iter == nil {
		return results, errors.New("destroyer closed")
	}
	own := ownNetNS()
	byNS := make(map[uint64][]CloseWaitSocket)
	for _, t := range targets {
		if _, dup := results[t.Cookie]; dup {
			continue
		}
		if t.Cookie == 0 {
			results[0] = Failed
			errs = append(errs, fmt.Errorf("socket %s-%s: no cookie", t.Local, t.Remote))
			continue
		}
		results[t.Cookie] = Failed // until said otherwise
		ino := uint64(t.NetNS)
		if ino == 0 {
			ino = own
		}
		byNS[ino] = append(byNS[ino], t)
	}
	if len(byNS) == 0 {
		return results, oneline.Join(errs...)
	}
	var only uint64
	if len(byNS) == 1 {
		for ino := range byNS {
			only = ino
		}
	}
	opened := make(map[uint64]namespace)
	for _, ns := range openNetworkNamespaces(only) {
		opened[ns.ino] = ns
	}
	defer func() {
		for _, ns := range opened {
			ns.file.Close()
		}
	}()
	inos := make([]uint64, 0, len(byNS))
	for ino := range byNS {
		inos = append(inos, ino)
	}
	slices.Sort(inos)
	for _, ino := range inos {
		ns, ok := opened[ino]
		if !ok {
			errs = append(errs, fmt.Errorf("network namespace %d not found: %d sockets not destroyed", ino, len(byNS[ino])))
			continue
		}
		var err error
		if d.method == DestroyKfunc {
			err = d.kfuncDestroyIn(ns, byNS[ino], results)
		} else {
			err = sockDiagDestroyIn(ns, byNS[ino], results)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("network namespace %d: %w", ino, err))
		}
	}
	return results, oneline.Join(errs...)
}

// kfuncDestroyIn runs the destroy program in ns for targets, in batches
// that fit the maps.
func (d *Destroyer) kfuncDestroyIn(ns namespace, targets []CloseWaitSocket, results map[uint64]DestroyResult) error {
	batch := int(d.targets.MaxEntries())
	var errs []error
	for len(targets) > 0 {
		n := min(batch, len(targets))
		errs = append(errs, d.kfuncBatch(ns, targets[:n], results))
		targets = targets[n:]
	}
	return oneline.Join(errs...)
}

func (d *Destroyer) kfuncBatch(ns namespace, targets []CloseWaitSocket, results map[uint64]DestroyResult) error {
	defer func() {
		// Both maps are left empty for the next run.
		for _, t := range targets {
			_ = d.targets.Delete(t.Cookie)
			_ = d.results.Delete(t.Cookie)
		}
	}()
	for _, t := range targets {
		if err := d.targets.Put(t.Cookie, uint8(1)); err != nil {
			return fmt.Errorf("fill the targets map: %w", err)
		}
	}
	var rc io.ReadCloser
	err := inNetNS(ns, func() error {
		var err error
		rc, err = d.iter.Open()
		return err
	})
	if err != nil {
		return fmt.Errorf("open iterator: %w", err)
	}
	_, err = io.Copy(io.Discard, rc)
	rc.Close()
	complete := err == nil
	var errs []error
	if err != nil {
		errs = append(errs, fmt.Errorf("run iterator: %w", err))
	}
	for _, t := range targets {
		var v int32
		if err := d.results.Lookup(t.Cookie, &v); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) && complete {
				results[t.Cookie] = NotFound
			}
			continue // Failed: the walk stopped before it, or the map is unreadable
		}
		switch {
		case v == int32(destroyDestroyStatusDS_DESTROYED):
			results[t.Cookie] = Destroyed
		case v >= int32(destroyDestroyStatusDS_LEFT_BASE):
			results[t.Cookie] = LeftCloseWait
		case v == -int32(unix.ENOENT):
			results[t.Cookie] = NotFound // closed: the kernel found it in CLOSE
		default:
			errs = append(errs, fmt.Errorf("socket %d (%s-%s): bpf_sock_destroy: %w", t.Cookie, t.Local, t.Remote, unix.Errno(-v)))
		}
	}
	return oneline.Join(errs...)
}

// sockDiagDestroyIn destroys targets with SOCK_DESTROY from a sock_diag
// socket of ns.
func sockDiagDestroyIn(ns namespace, targets []CloseWaitSocket, results map[uint64]DestroyResult) error {
	fd := -1
	err := inNetNS(ns, func() error {
		var err error
		fd, err = sockDiagOpen()
		return err
	})
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var errs []error
	for _, t := range targets {
		msg, err := sockDiagGet(fd, &t, true)
		if errors.Is(err, unix.ENOENT) {
			results[t.Cookie] = NotFound
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("socket %d (%s-%s): read its state: %w", t.Cookie, t.Local, t.Remote, err))
			continue
		}
		if msg.state != tcpCloseWait {
			results[t.Cookie] = LeftCloseWait
			continue
		}
		err = sockDiagRequest(fd, unix.SOCK_DESTROY, &t, true, nil)
		switch {
		case err == nil:
			results[t.Cookie] = Destroyed
		case errors.Is(err, unix.ENOENT):
			results[t.Cookie] = NotFound
		default:
			errs = append(errs, fmt.Errorf("socket %d (%s-%s): SOCK_DESTROY: %w", t.Cookie, t.Local, t.Remote, sockDestroyError(err)))
		}
	}
	return oneline.Join(errs...)
}

var errNoDiagDestroy = fmt.Errorf("%w: kernel built without CONFIG_INET_DIAG_DESTROY", ErrUnsupportedKernel)

// sockDestroyError explains the errors SOCK_DESTROY returns for a kernel or
// process that cannot destroy sockets.
func sockDestroyError(err error) error {
	switch {
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%w (%w)", errNoDiagDestroy, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%w: %w: needs CAP_NET_ADMIN", ErrPrivilege, err)
	}
	return err
}

// sockDiagProbe checks that SOCK_DESTROY is there for TCP: a request for a
// socket that cannot exist fails with ENOENT if so, EOPNOTSUPP if the
// kernel lacks CONFIG_INET_DIAG_DESTROY. ENOENT also comes when TCP has no
// sock_diag handler (tcp_diag not loaded), so a get of a listener of ours
// must work too.
func sockDiagProbe() error {
	fd, err := sockDiagOpen()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	nobody := CloseWaitSocket{
		Cookie: 1<<64 - 2, Family: events.FamilyIPv4,
		Local: netip.AddrPortFrom(netip.IPv4Unspecified(), 0), Remote: netip.AddrPortFrom(netip.IPv4Unspecified(), 0),
	}
	err = sockDiagRequest(fd, unix.SOCK_DESTROY, &nobody, true, nil)
	if err == nil || !errors.Is(err, unix.ENOENT) {
		if err == nil {
			return errors.New("probe: a request for no socket succeeded")
		}
		return sockDestroyError(err)
	}
	return tcpDiagKnown(fd)
}

// tcpDiagKnown checks that sock_diag knows TCP sockets: it answers ENOENT
// for any socket when TCP has no handler (tcp_diag not loaded), as for a
// socket that does not exist. A get of a listener of ours tells them
// apart. Handlers are the kernel's, not a namespace's: one check is
// enough for every namespace.
func tcpDiagKnown(fd int) error {
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil // cannot tell
	}
	defer unix.Close(l)
	if unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}) != nil || unix.Listen(l, 1) != nil {
		return nil
	}
	sa, err := unix.Getsockname(l)
	if err != nil {
		return nil
	}
	lsn := CloseWaitSocket{
		Cookie: ^uint64(0), Family: events.FamilyIPv4,
		Local:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port)),
		Remote: netip.AddrPortFrom(netip.IPv4Unspecified(), 0),
	}
	if _, err := sockDiagGet(fd, &lsn, false); err != nil {
		return fmt.Errorf("TCP sockets unknown to sock_diag (is the tcp_diag module loaded?): %w", err)
	}
	return nil
}

// tcpDiagCheck is tcpDiagKnown with a sock_diag socket of its own.
func tcpDiagCheck() error {
	fd, err := sockDiagOpen()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return tcpDiagKnown(fd)
}

// sockDiagOpen opens a NETLINK_SOCK_DIAG socket, which talks to the
// network namespace of the calling thread.
func sockDiagOpen() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return -1, fmt.Errorf("open sock_diag netlink socket: %w", err)
	}
	// The kernel answers before sendto returns; the timeout is a safeguard.
	tv := unix.Timeval{Sec: 5}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("sock_diag socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind sock_diag socket: %w", err)
	}
	return fd, nil
}

// Sizes of struct inet_diag_req_v2 and the fixed part of struct
// inet_diag_msg (linux/inet_diag.h).
const (
	inetDiagReqV2Size = 56
	inetDiagMsgSize   = 72
	nlmsgHdrSize      = unix.SizeofNlMsghdr
	inetDiagNoCookie  = ^uint32(0)
)

// inetDiagMsg is what a SOCK_DIAG_BY_FAMILY get says of a socket.
type inetDiagMsg struct {
	state  uint8
	cookie uint64
	inode  uint32
	uid    uint32
}

var sockDiagSeq atomic.Uint32

// sockDiagGet asks for the socket s (its cookie too if withCookie).
func sockDiagGet(fd int, s *CloseWaitSocket, withCookie bool) (inetDiagMsg, error) {
	var msg inetDiagMsg
	err := sockDiagRequest(fd, unix.SOCK_DIAG_BY_FAMILY, s, withCookie, func(b []byte) error {
		if len(b) < inetDiagMsgSize {
			return fmt.Errorf("short inet_diag_msg: %d bytes", len(b))
		}
		ne := binary.NativeEndian
		msg.state = b[1]
		msg.cookie = uint64(ne.Uint32(b[44:])) | uint64(ne.Uint32(b[48:]))<<32
		msg.uid = ne.Uint32(b[64:])
		msg.inode = ne.Uint32(b[68:])
		return nil
	})
	return msg, err
}

// sockDiagRequest sends one exact (not dump) request about the TCP socket
// s and waits for its answer: reply gets the payload of a
// SOCK_DIAG_BY_FAMILY answer; an NLMSG_ERROR answer is returned as its
// errno (nil for an acknowledgement).
func sockDiagRequest(fd int, typ uint16, s *CloseWaitSocket, withCookie bool, reply func([]byte) error) error {
	return sockDiagRequestExt(fd, typ, s, withCookie, 0, reply)
}

// sockDiagRequestExt is sockDiagRequest asking for the extensions in ext
// (idiag_ext) too.
func sockDiagRequestExt(fd int, typ uint16, s *CloseWaitSocket, withCookie bool, ext uint8, reply func([]byte) error) error {
	ne := binary.NativeEndian
	seq := sockDiagSeq.Add(1)
	req := make([]byte, nlmsgHdrSize+inetDiagReqV2Size)
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], typ)
	flags := uint16(unix.NLM_F_REQUEST)
	if reply == nil {
		flags |= unix.NLM_F_ACK
	}
	ne.PutUint16(req[6:], flags)
	ne.PutUint32(req[8:], seq)
	r := req[nlmsgHdrSize:]
	family := byte(unix.AF_INET)
	if s.Family == events.FamilyIPv6 {
		family = unix.AF_INET6
	}
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	r[2] = ext
	ne.PutUint32(r[4:], 1<<tcpCloseWait) // idiag_states: only looked at by dumps
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], s.Local.Port())
	binary.BigEndian.PutUint16(id[2:], s.Remote.Port())
	putAddr := func(b []byte, a netip.Addr) {
		switch {
		case family == unix.AF_INET && a.Unmap().Is4():
			a4 := a.Unmap().As4()
			copy(b, a4[:])
		case family == unix.AF_INET6 && a.IsValid():
			a16 := a.As16()
			copy(b, a16[:])
		}
	}
	putAddr(id[4:20], s.Local.Addr())
	putAddr(id[20:36], s.Remote.Addr())
	// id[36:40] idiag_if: 0, any device
	cookie := [2]uint32{inetDiagNoCookie, inetDiagNoCookie}
	if withCookie {
		cookie = [2]uint32{uint32(s.Cookie), uint32(s.Cookie >> 32)}
	}
	ne.PutUint32(id[40:], cookie[0])
	ne.PutUint32(id[44:], cookie[1])

	return sockDiagExchange(fd, req, 16384, func(typ uint16, payload []byte) (bool, error) {
		if typ != unix.SOCK_DIAG_BY_FAMILY || reply == nil {
			return false, nil
		}
		return true, reply(payload)
	})
}

// sockDiagExchange sends a sock_diag request (its sequence number at
// req[8:12]) and hands each answer of that sequence but errors to handle,
// until handle says it is done or an NLMSG_ERROR ends the exchange: its
// errno, or nil for an acknowledgement. Answers to earlier requests that
// gave up (a receive timeout) are skipped.
func sockDiagExchange(fd int, req []byte, bufSize int, handle func(typ uint16, payload []byte) (done bool, err error)) error {
	ne := binary.NativeEndian
	seq := ne.Uint32(req[8:])
	err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	for err == unix.EINTR {
		err = unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	buf := make([]byte, bufSize)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue // a socket with a receive timeout is not restarted after a signal
		}
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		for b := buf[:n]; len(b) >= nlmsgHdrSize; {
			l := int(ne.Uint32(b[0:]))
			if l < nlmsgHdrSize || l > len(b) {
				return errors.New("malformed netlink message")
			}
			m := b[:l]
			b = b[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(b)):]
			if ne.Uint32(m[8:]) != seq {
				continue
			}
			typ := ne.Uint16(m[4:])
			if typ == unix.NLMSG_ERROR {
				if len(m) < nlmsgHdrSize+4 {
					return errors.New("short netlink error")
				}
				if errno := int32(ne.Uint32(m[nlmsgHdrSize:])); errno != 0 {
					return unix.Errno(-errno)
				}
				return nil
			}
			if done, err := handle(typ, m[nlmsgHdrSize:]); done {
				return err
			}
		}
	}
}
