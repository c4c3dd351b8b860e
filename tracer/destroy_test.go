package tracer_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/tracer"
)

func TestDestroyResultString(t *testing.T) {
	for r, want := range map[tracer.DestroyResult]string{
		tracer.Destroyed:         "destroyed",
		tracer.LeftCloseWait:     "left CLOSE-WAIT",
		tracer.NotFound:          "not found",
		tracer.Failed:            "failed",
		tracer.DestroyResult(42): "DestroyResult(42)",
	} {
		if got := r.String(); got != want {
			t.Errorf("%d: %q, want %q", int(r), got, want)
		}
	}
}

// dstTcpPair is a connection made by the test: srv is the accepted side, the
// one the tests put in CLOSE-WAIT and destroy; cli its peer.
type dstTcpPair struct {
	srv, cli *net.TCPConn
	cookie   uint64
	inode    uint64
}

// dstRawFD runs f with the connection's descriptor.
func dstRawFD(t *testing.T, c *net.TCPConn, f func(fd int)) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) { f(int(fd)) }); err != nil {
		t.Fatal(err)
	}
}

// dstTcpState is the kernel's TCP state of c (8: CLOSE_WAIT), 0 if unknown.
func dstTcpState(t *testing.T, c *net.TCPConn) uint8 {
	t.Helper()
	var state uint8
	dstRawFD(t, c, func(fd int) {
		if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	})
	return state
}

const (
	dstStateEstablished = 1
	dstStateCloseWait   = 8
)

// dstConnect makes a connection to a new listener on listenAddr (network tcp,
// tcp4 or tcp6), dialing dialHost. With closeWait, the client shuts its
// side down and the accepted socket is in CLOSE-WAIT on return.
func dstConnect(t *testing.T, network, listenAddr, dialHost string, closeWait bool) *dstTcpPair {
	t.Helper()
	ln, err := net.Listen(network, listenAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	cli, err := net.Dial(network, net.JoinHostPort(dialHost, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		cli.Close()
		t.Fatal(err)
	}
	p := &dstTcpPair{srv: srv.(*net.TCPConn), cli: cli.(*net.TCPConn)}
	t.Cleanup(func() { p.srv.Close(); p.cli.Close() })
	dstRawFD(t, p.srv, func(fd int) {
		if p.cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
			t.Fatalf("SO_COOKIE: %v", err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		p.inode = st.Ino
	})
	if closeWait {
		if err := p.cli.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		dstWaitState(t, p.srv, dstStateCloseWait)
	}
	return p
}

func dstWaitState(t *testing.T, c *net.TCPConn, want uint8) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for dstTcpState(t, c) != want {
		if time.Now().After(deadline) {
			t.Fatalf("socket in state %d, want %d", dstTcpState(t, c), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// dstNetnsOf is the inode of the network namespace of the calling thread.
func dstNetnsOf(t *testing.T) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// dstOwnCgroupID is the id of this process's cgroup v2, 0 when no cgroup2 is
// mounted.
func dstOwnCgroupID(t *testing.T) uint64 {
	t.Helper()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	root := ""
	for line := range strings.SplitSeq(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 9 && f[len(f)-3] == "cgroup2" && f[3] == "/" {
			root = f[4]
			break
		}
	}
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(cg), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok && root != "" {
			var st unix.Stat_t
			if unix.Stat(filepath.Join(root, path), &st) == nil {
				return st.Ino
			}
		}
	}
	return 0
}

func dstFindCookie(socks []tracer.CloseWaitSocket, cookie uint64) (tracer.CloseWaitSocket, bool) {
	for _, s := range socks {
		if s.Cookie == cookie {
			return s, true
		}
	}
	return tracer.CloseWaitSocket{}, false
}

// dstListed lists the sockets in CLOSE-WAIT in netns and returns the one with
// the cookie of p.
func dstListed(t *testing.T, netns uint32, p *dstTcpPair) (tracer.CloseWaitSocket, bool) {
	t.Helper()
	socks, err := tracer.ListCloseWaitSockets(netns)
	if err != nil {
		t.Fatalf("ListCloseWaitSockets(%d): %v", netns, err)
	}
	return dstFindCookie(socks, p.cookie)
}

// dstCheckListed checks what the listing says of p, in CLOSE-WAIT.
func dstCheckListed(t *testing.T, s tracer.CloseWaitSocket, p *dstTcpPair, netns uint32, family events.Family) {
	t.Helper()
	local := p.srv.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := p.srv.RemoteAddr().(*net.TCPAddr).AddrPort()
	if family == events.FamilyIPv4 { // a dual-stack socket is listed as IPv4
		local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
		remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	}
	want := tracer.CloseWaitSocket{
		Cookie: p.cookie, NetNS: netns, CgroupID: s.CgroupID, Inode: p.inode,
		UID: uint32(os.Getuid()), Family: family, Local: local, Remote: remote,
	}
	if s != want {
		t.Errorf("listed %+v\n                want %+v", s, want)
	}
	if id := dstOwnCgroupID(t); id != 0 && s.CgroupID != id {
		t.Errorf("cgroup id %d, want %d (this process's cgroup v2)", s.CgroupID, id)
	}
}

func TestListCWSockets(t *testing.T) {
	testenv.RequirePrivileged(t)
	own := dstNetnsOf(t)
	cases := []struct {
		name, network, listen, dial string
		family                      events.Family
	}{
		{"ipv4", "tcp4", "127.0.0.1:0", "127.0.0.1", events.FamilyIPv4},
		{"ipv6", "tcp6", "[::1]:0", "::1", events.FamilyIPv6},
		{"dual-stack", "tcp", "[::]:0", "127.0.0.1", events.FamilyIPv4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.network != "tcp4" {
				if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
					t.Skipf("no IPv6 loopback: %v", err)
				} else {
					ln.Close()
				}
			}
			cw := dstConnect(t, c.network, c.listen, c.dial, true)
			est := dstConnect(t, c.network, c.listen, c.dial, false)
			for _, ns := range []uint32{0, own} {
				socks, err := tracer.ListCloseWaitSockets(ns)
				if err != nil {
					t.Fatalf("ListCloseWaitSockets(%d): %v", ns, err)
				}
				s, ok := dstFindCookie(socks, cw.cookie)
				if !ok {
					t.Fatalf("ListCloseWaitSockets(%d): the socket in CLOSE-WAIT (cookie %d) not listed", ns, cw.cookie)
				}
				dstCheckListed(t, s, cw, own, c.family)
				if _, ok := dstFindCookie(socks, est.cookie); ok {
					t.Errorf("ListCloseWaitSockets(%d): an ESTABLISHED socket listed", ns)
				}
				for _, s := range socks {
					if s.Local.Port() == est.srv.LocalAddr().(*net.TCPAddr).AddrPort().Port() &&
						s.Remote.Port() == est.srv.RemoteAddr().(*net.TCPAddr).AddrPort().Port() {
						t.Errorf("ListCloseWaitSockets(%d): an ESTABLISHED socket listed: %+v", ns, s)
					}
				}
			}
		})
	}
}

func TestListCWUnknownNetNS(t *testing.T) {
	testenv.RequirePrivileged(t)
	if _, err := tracer.ListCloseWaitSockets(1); err == nil {
		t.Fatal("listing network namespace 1: no error")
	}
}

// dstDestroyer makes a Destroyer with the method, skipping where the kernel
// lacks it.
func dstDestroyer(t *testing.T, method string) *tracer.Destroyer {
	t.Helper()
	if method == tracer.DestroyKfunc && !kfuncOffered(t) {
		if _, err := tracer.NewDestroyerWith(method); err == nil {
			t.Errorf("the kfunc method loaded where the kernel does not offer bpf_sock_destroy")
		}
		t.Skip("the kernel does not offer the bpf_sock_destroy kfunc (Linux 6.5) to TCP iterators")
	}
	d, err := tracer.NewDestroyerWith(method)
	if errors.Is(err, tracer.ErrUnsupportedKernel) && method == tracer.DestroySockDiag {
		t.Skipf("kernel without SOCK_DESTROY: %v", err)
	}
	if err != nil {
		t.Fatalf("NewDestroyerWith(%q): %v", method, err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	if d.Method() != method {
		t.Fatalf("Method() = %q, want %q", d.Method(), method)
	}
	return d
}

var dstDestroyMethods = []string{tracer.DestroyKfunc, tracer.DestroySockDiag}

// kfuncOffered probes, with programs of the test's own, whether kill's
// kfunc method can work here: the kernel has bpf_sock_destroy (Linux 6.5)
// and lets TCP iterators load.
func kfuncOffered(t *testing.T) bool {
	t.Helper()
	if !testenv.HasKernelFunc(t, "bpf_sock_destroy") {
		t.Log("the kernel has no bpf_sock_destroy kfunc")
		return false
	}
	if ok, why := testenv.CanLoadIter(t, "tcp"); !ok {
		t.Logf("the kernel refuses TCP iterators: %v", why)
		return false
	}
	return true
}

func TestDestroyerProbe(t *testing.T) {
	testenv.RequirePrivileged(t)
	d, err := tracer.NewDestroyer()
	if err != nil {
		t.Fatalf("NewDestroyer: %v", err)
	}
	defer d.Close()
	want := tracer.DestroySockDiag
	if kfuncOffered(t) {
		want = tracer.DestroyKfunc
	}
	if d.Method() != want {
		t.Errorf("NewDestroyer chose %q, want %q", d.Method(), want)
	}
	if _, err := tracer.NewDestroyerWith("nope"); err == nil {
		t.Error("NewDestroyerWith(nope): no error")
	}
}

// dstSsHas reports whether ss lists a TCP socket from local to remote.
func dstSsHas(t *testing.T, local, remote netip.AddrPort) bool {
	t.Helper()
	out, err := exec.Command(testenv.RequireTool(t, "ss", "iproute2"), "-tanH").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 5 && f[3] == local.String() && f[4] == remote.String() {
			return true
		}
	}
	return false
}

// dstCheckDestroyedOwner checks what the owner and the peer of a destroyed
// socket see. The owner: poll says error and hang-up; a read returns the
// data left unread, if any, then end of file (the peer's FIN came before:
// the read does not report the error); the first write ECONNABORTED, the
// next EPIPE. The peer: a reset.
func dstCheckDestroyedOwner(t *testing.T, p *dstTcpPair, unread string) {
	t.Helper()
	if st := dstTcpState(t, p.srv); st != 7 { // TCP_CLOSE
		t.Errorf("destroyed socket in state %d, want CLOSE (7)", st)
	}
	dstRawFD(t, p.srv, func(fd int) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
		if _, err := unix.Poll(fds, 0); err != nil {
			t.Fatal(err)
		}
		if want := int16(unix.POLLERR | unix.POLLHUP); fds[0].Revents&want != want {
			t.Errorf("owner: poll revents %#x, want POLLERR|POLLHUP", fds[0].Revents)
		}
	})
	p.srv.SetDeadline(time.Now().Add(waitTimeout))
	if unread != "" {
		buf := make([]byte, len(unread))
		if _, err := io.ReadFull(p.srv, buf); err != nil || string(buf) != unread {
			t.Errorf("owner: read of the unread data after destroy: %q, %v; want %q", buf, err, unread)
		}
	}
	n, err := p.srv.Read(make([]byte, 16))
	t.Logf("owner: read after destroy: %d, %v", n, err)
	if n != 0 || err != io.EOF {
		t.Errorf("owner's read after destroy: %d, %v; want end of file", n, err)
	}
	_, err = p.srv.Write([]byte("x"))
	t.Logf("owner: first write after destroy: %v", err)
	if !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("owner's first write after destroy: %v, want ECONNABORTED", err)
	}
	_, err = p.srv.Write([]byte("x"))
	t.Logf("owner: second write after destroy: %v", err)
	if !errors.Is(err, syscall.EPIPE) {
		t.Errorf("owner's second write after destroy: %v, want EPIPE", err)
	}
	p.cli.SetDeadline(time.Now().Add(waitTimeout))
	_, err = p.cli.Read(make([]byte, 16))
	t.Logf("peer: read after destroy: %v", err)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer's read after destroy: %v, want ECONNRESET", err)
	}
}

func TestDestroy(t *testing.T) {
	testenv.RequirePrivileged(t)
	own := dstNetnsOf(t)
	for _, method := range dstDestroyMethods {
		t.Run(method, func(t *testing.T) {
			d := dstDestroyer(t, method)
			target := dstConnect(t, "tcp4", "127.0.0.1:0", "127.0.0.1", true)
			bystander := dstConnect(t, "tcp4", "127.0.0.1:0", "127.0.0.1", true)
			closed := dstConnect(t, "tcp4", "127.0.0.1:0", "127.0.0.1", true)
			established := dstConnect(t, "tcp4", "127.0.0.1:0", "127.0.0.1", false)
			v6 := dstConnect(t, "tcp", "[::]:0", "::1", false)
			// Data the owner has not read when its socket is destroyed.
			if _, err := v6.cli.Write([]byte("unread")); err != nil {
				t.Fatal(err)
			}
			if err := v6.cli.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			dstWaitState(t, v6.srv, dstStateCloseWait)

			socks, err := tracer.ListCloseWaitSockets(own)
			if err != nil {
				t.Fatal(err)
			}
			var targets []tracer.CloseWaitSocket
			for _, p := range []*dstTcpPair{target, closed, v6} {
				s, ok := dstFindCookie(socks, p.cookie)
				if !ok {
					t.Fatalf("socket in CLOSE-WAIT (cookie %d) not listed", p.cookie)
				}
				targets = append(targets, s)
			}
			if _, ok := dstFindCookie(socks, bystander.cookie); !ok {
				t.Fatal("bystander not listed")
			}
			// A stale listing: the socket with this cookie is ESTABLISHED.
			stale := tracer.CloseWaitSocket{
				Cookie: established.cookie, NetNS: own, Family: events.FamilyIPv4,
				Local:  established.srv.LocalAddr().(*net.TCPAddr).AddrPort(),
				Remote: established.srv.RemoteAddr().(*net.TCPAddr).AddrPort(),
			}
			// Gone: the listing is older than the socket's close.
			if err := closed.srv.Close(); err != nil {
				t.Fatal(err)
			}
			// Never existed, or reused addresses with another socket: the
			// target's addresses with a cookie no socket has.
			other := targets[0]
			other.Cookie = ^uint64(0) - 1
			targets = append(targets, stale, other)

			res, err := d.Destroy(targets)
			if err != nil {
				t.Fatalf("Destroy: %v", err)
			}
			t.Logf("results: %v", res)
			for _, c := range []struct {
				what   string
				cookie uint64
				want   []tracer.DestroyResult
			}{
				{"target", target.cookie, []tracer.DestroyResult{tracer.Destroyed}},
				{"IPv6 target", v6.cookie, []tracer.DestroyResult{tracer.Destroyed}},
				{"closed by its owner", closed.cookie, []tracer.DestroyResult{tracer.NotFound, tracer.LeftCloseWait}},
				{"established (stale listing)", established.cookie, []tracer.DestroyResult{tracer.LeftCloseWait}},
				{"other cookie, same addresses", other.Cookie, []tracer.DestroyResult{tracer.NotFound}},
			} {
				got, ok := res[c.cookie]
				if !ok || !dstContainsResult(c.want, got) {
					t.Errorf("%s: %v (present %v), want one of %v", c.what, got, ok, c.want)
				}
			}
			if len(res) != len(targets) {
				t.Errorf("%d results for %d targets", len(res), len(targets))
			}

			dstCheckDestroyedOwner(t, target, "")
			dstCheckDestroyedOwner(t, v6, "unread")
			if dstSsHas(t, target.srv.LocalAddr().(*net.TCPAddr).AddrPort(), target.srv.RemoteAddr().(*net.TCPAddr).AddrPort()) {
				t.Error("ss still lists the destroyed socket")
			}
			if !dstSsHas(t, bystander.srv.LocalAddr().(*net.TCPAddr).AddrPort(), bystander.srv.RemoteAddr().(*net.TCPAddr).AddrPort()) {
				t.Error("ss does not list the bystander")
			}
			socks, err = tracer.ListCloseWaitSockets(own)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := dstFindCookie(socks, target.cookie); ok {
				t.Error("the destroyed socket is listed again")
			}
			if _, ok := dstFindCookie(socks, bystander.cookie); !ok {
				t.Error("the socket not targeted is no longer listed")
			}
			if st := dstTcpState(t, bystander.srv); st != dstStateCloseWait {
				t.Errorf("bystander in state %d, want CLOSE_WAIT", st)
			}
			// The established connection was left alone and works.
			if st := dstTcpState(t, established.srv); st != dstStateEstablished {
				t.Errorf("established socket in state %d", st)
			}
			if _, err := established.cli.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			established.srv.SetDeadline(time.Now().Add(waitTimeout))
			if _, err := io.ReadFull(established.srv, buf); err != nil || string(buf) != "ping" {
				t.Errorf("established connection after Destroy: %q, %v", buf, err)
			}

			// Again: gone.
			res, err = d.Destroy(targets[:1])
			if err != nil || res[target.cookie] != tracer.NotFound {
				t.Errorf("destroying the destroyed socket again: %v, %v; want not found", res, err)
			}
		})
	}
}

func dstContainsResult(rs []tracer.DestroyResult, r tracer.DestroyResult) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

func TestDestroyOtherNetNS(t *testing.T) {
	testenv.RequirePrivileged(t)
	own := dstNetnsOf(t)
	ino, inNS := testNetNS(t)
	for _, method := range dstDestroyMethods {
		t.Run(method, func(t *testing.T) {
			d := dstDestroyer(t, method)
			var p, stay *dstTcpPair
			inNS(func() {
				if dstNetnsOf(t) != ino {
					t.Error("not in the test namespace")
					return
				}
				p = dstConnect(t, "tcp4", "127.0.0.1:0", "127.0.0.1", true)
				stay = dstConnect(t, "tcp4", "127.0.0.1:0", "127.0.0.1", true)
			})
			if p == nil {
				t.FailNow()
			}
			s, ok := dstListed(t, 0, p)
			if !ok {
				t.Fatal("the socket in the other namespace is not in the node-wide listing")
			}
			dstCheckListed(t, s, p, ino, events.FamilyIPv4)
			if _, ok := dstListed(t, ino, p); !ok {
				t.Fatal("the socket is not in its namespace's listing")
			}
			if _, ok := dstListed(t, own, p); ok {
				t.Fatal("the socket is in our namespace's listing")
			}
			res, err := d.Destroy([]tracer.CloseWaitSocket{s})
			if err != nil || res[p.cookie] != tracer.Destroyed {
				t.Fatalf("Destroy: %v, %v", res, err)
			}
			dstCheckDestroyedOwner(t, p, "")
			if _, ok := dstListed(t, ino, p); ok {
				t.Error("the destroyed socket is listed again")
			}
			if _, ok := dstListed(t, ino, stay); !ok {
				t.Error("the socket not targeted is no longer listed")
			}
			// With the namespace left out, our own is searched: not there.
			s.NetNS = 0
			s.Cookie = stay.cookie
			res, err = d.Destroy([]tracer.CloseWaitSocket{s})
			if err != nil || res[stay.cookie] != tracer.NotFound {
				t.Errorf("Destroy in the wrong namespace: %v, %v; want not found", res, err)
			}
		})
	}
}

func TestDestroyUnknownNetNS(t *testing.T) {
	testenv.RequirePrivileged(t)
	for _, method := range dstDestroyMethods {
		t.Run(method, func(t *testing.T) {
			d := dstDestroyer(t, method)
			s := tracer.CloseWaitSocket{Cookie: 12345, NetNS: 1, Family: events.FamilyIPv4}
			res, err := d.Destroy([]tracer.CloseWaitSocket{s})
			if err == nil || res[12345] != tracer.Failed {
				t.Errorf("Destroy in a namespace that does not exist: %v, %v; want failed and an error", res, err)
			}
		})
	}
}

func TestDestroyResultReason(t *testing.T) {
	for r, want := range map[tracer.DestroyResult]string{
		tracer.LeftCloseWait: "left_close_wait", tracer.NotFound: "not_found", tracer.Failed: "failed: failed",
	} {
		if got := r.Reason(); got != want {
			t.Errorf("%v: reason %q, want %q", r, got, want)
		}
	}
}
