package tracer_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/tracer"
)

// diagPair is a loopback connection; srv, the accepted side, goes into
// CLOSE-WAIT when the client shuts down its side.
type diagPair struct {
	srv, cli *net.TCPConn
	sock     tracer.CloseWaitSocket // srv as the Diagnoser takes it
}

func diagConnect(t *testing.T, network, listenAddr, dialHost string) *diagPair {
	t.Helper()
	ln, err := net.Listen(network, listenAddr)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, listenAddr, err)
	}
	defer ln.Close()
	cli, err := net.Dial(network, net.JoinHostPort(dialHost, fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p := &diagPair{srv: srv.(*net.TCPConn), cli: cli.(*net.TCPConn)}
	t.Cleanup(func() { p.srv.Close(); p.cli.Close() })
	local := p.srv.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := p.srv.RemoteAddr().(*net.TCPAddr).AddrPort()
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	p.sock = tracer.CloseWaitSocket{Family: events.FamilyIPv4, Local: local, Remote: remote}
	if local.Addr().Is6() {
		p.sock.Family = events.FamilyIPv6
	}
	rc, err := p.srv.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) {
		p.sock.Cookie, err = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
		var st unix.Stat_t
		if unix.Fstat(int(fd), &st) == nil {
			p.sock.Inode = st.Ino
		}
	})
	if err != nil {
		p.sock.Cookie = 0 // before Linux 4.12 (SO_COOKIE): addresses only
	}
	return p
}

// closeWait has the client send data, shut down its side, and waits for
// the server socket to be in CLOSE-WAIT.
func (p *diagPair) closeWait(t *testing.T, data []byte) {
	t.Helper()
	if len(data) > 0 {
		if _, err := p.cli.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.cli.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rc, _ := p.srv.SyscallConn()
	deadline := time.Now().Add(waitTimeout)
	for {
		var state uint8
		rc.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				state = info.State
			}
		})
		if state == 8 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server socket in state %d, want CLOSE-WAIT", state)
		}
		time.Sleep(time.Millisecond)
	}
}

// The receive queue sock_diag reports counts the FIN until the application
// reads past it, on this kernel: data unread, then none with the FIN
// unread, then end of file read.
func TestDiagnoseReceiveQueue(t *testing.T) {
	testenv.RequirePrivileged(t)
	for _, tc := range []struct{ name, network, listen, dial string }{
		{"ipv4", "tcp4", "127.0.0.1:0", "127.0.0.1"},
		{"ipv6", "tcp6", "[::1]:0", "::1"},
		{"dual-stack", "tcp", "[::]:0", "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := tracer.NewDiagnoser(true)
			defer d.Release()
			const quiet = 300 * time.Millisecond

			// tcp_info counts in jiffies: times may be a tick off.
			const tick = 20 * time.Millisecond
			// 100 bytes, then the FIN, none of it read.
			unread := diagConnect(t, tc.network, tc.listen, tc.dial)
			sent := time.Now()
			unread.closeWait(t, make([]byte, 100))
			// All data read before the FIN came, the FIN not.
			p := diagConnect(t, tc.network, tc.listen, tc.dial)
			if _, err := p.cli.Write(make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(p.srv, make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			p.closeWait(t, nil)
			time.Sleep(quiet)

			diag, err := d.Diagnose(&unread.sock)
			if err != nil {
				t.Fatalf("Diagnose: %v", err)
			}
			if diag.ReadEOF || diag.UnreadBytes != 100 {
				t.Errorf("100 bytes unread: read_eof %v unread %d", diag.ReadEOF, diag.UnreadBytes)
			}
			if hi := time.Since(sent) + tick; diag.SinceRecv < quiet-tick || diag.SinceRecv > hi || diag.SinceSend < quiet-tick {
				t.Errorf("since recv %v, since send %v (never sent: since established), want both >= %v, since recv <= %v", diag.SinceRecv, diag.SinceSend, quiet, hi)
			}
			// Reading exactly the data also consumes the FIN when it came
			// while the data was queued (the kernel merges them): read_eof
			// may be either, but nothing is unread.
			if _, err := io.ReadFull(unread.srv, make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			if diag, err = d.Diagnose(&unread.sock); err != nil || diag.UnreadBytes != 0 {
				t.Errorf("data read: %+v, %v; want 0 unread", diag, err)
			}
			if n, err := unread.srv.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("read %d, %v; want EOF", n, err)
			}
			if diag, err = d.Diagnose(&unread.sock); err != nil || !diag.ReadEOF || diag.UnreadBytes != 0 {
				t.Errorf("EOF read: %+v, %v; want read_eof true, 0 unread", diag, err)
			}

			if diag, err = d.Diagnose(&p.sock); err != nil || diag.ReadEOF || diag.UnreadBytes != 0 {
				t.Errorf("data read, then the FIN came: %+v, %v; want read_eof false, 0 unread", diag, err)
			}
			wrote := time.Now()
			if _, err := p.srv.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if diag, err = d.Diagnose(&p.sock); err != nil || diag.SinceSend > time.Since(wrote)+tick || diag.SinceRecv < quiet-tick {
				t.Errorf("after a write %v ago: %+v, %v; want since send within that, since recv at least %v", time.Since(wrote), diag, err, quiet)
			}
			if n, err := p.srv.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("read %d, %v; want EOF", n, err)
			}
			if diag, err = d.Diagnose(&p.sock); err != nil || !diag.ReadEOF || diag.UnreadBytes != 0 {
				t.Errorf("EOF read: %+v, %v; want read_eof true, 0 unread", diag, err)
			}

			// Matched by addresses alone, as on kernels without cookies.
			byAddr := p.sock
			byAddr.Cookie = 0
			if diag, err = d.Diagnose(&byAddr); err != nil || !diag.ReadEOF {
				t.Errorf("by addresses: %+v, %v", diag, err)
			}
			if p.sock.Cookie != 0 {
				wrong := p.sock
				wrong.Cookie++
				if _, err := d.Diagnose(&wrong); !errors.Is(err, unix.ENOENT) {
					t.Errorf("another cookie: %v, want ENOENT", err)
				}
			}
			// An event as the pipeline hands it over.
			ev := events.Event{Sock: p.sock.Cookie, Family: p.sock.Family, LocalAddr: p.sock.Local.Addr(), LocalPort: p.sock.Local.Port(),
				RemoteAddr: p.sock.Remote.Addr(), RemotePort: p.sock.Remote.Port(), Inode: p.sock.Inode}
			tracer.NewDiagnoser(p.sock.Cookie != 0).Event(&ev)
			if !ev.DiagKnown || !ev.ReadEOF || ev.UnreadBytes != 0 || ev.SinceRecvNS < quiet.Nanoseconds() {
				t.Errorf("event diagnosis: known %v read_eof %v unread %d since_recv %d", ev.DiagKnown, ev.ReadEOF, ev.UnreadBytes, ev.SinceRecvNS)
			}

			// Out of CLOSE-WAIT: no diagnosis.
			p.srv.Close()
			if _, err := d.Diagnose(&p.sock); err == nil {
				t.Error("closed socket diagnosed")
			}
			ev.DiagKnown = false
			tracer.NewDiagnoser(true).Event(&ev)
			if ev.DiagKnown {
				t.Error("closed socket's event diagnosed")
			}
		})
	}
}

// A socket in another network namespace is diagnosed in it; one in a
// namespace that cannot be found is not, and nothing blocks.
func TestDiagnoseOtherNetNS(t *testing.T) {
	testenv.RequirePrivileged(t)
	ino, inNS := testNetNS(t)
	var p *diagPair
	inNS(func() {
		p = diagConnect(t, "tcp4", "127.0.0.1:0", "127.0.0.1")
		p.closeWait(t, []byte("abc"))
	})
	if p == nil {
		t.FailNow()
	}
	d := tracer.NewDiagnoser(true)
	defer d.Release()
	p.sock.NetNS = ino
	for range 2 { // the second time on the kept socket
		diag, err := d.Diagnose(&p.sock)
		if err != nil || diag.ReadEOF || diag.UnreadBytes != 3 {
			t.Errorf("in namespace %d: %+v, %v; want 3 bytes unread", ino, diag, err)
		}
	}
	own := p.sock
	own.NetNS = 0
	if _, err := d.Diagnose(&own); !errors.Is(err, unix.ENOENT) {
		t.Errorf("looked up in our own namespace: %v, want ENOENT", err)
	}
	gone := p.sock
	gone.NetNS = 1
	if _, err := d.Diagnose(&gone); err == nil {
		t.Error("diagnosed in a namespace that does not exist")
	}
	// The failure is remembered: no second search for the namespace.
	if _, err := d.Diagnose(&gone); err == nil || !strings.Contains(err.Error(), "could not be entered") {
		t.Errorf("second try in a missing namespace: %v, want the remembered failure", err)
	}
	d.Release()
	if diag, err := d.Diagnose(&p.sock); err != nil || diag.UnreadBytes != 3 {
		t.Errorf("after Release: %+v, %v", diag, err)
	}
}
