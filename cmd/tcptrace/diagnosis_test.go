package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/tracer"
)

// of matches an event of c's server socket.
func of(kind string, c conn) func(jsonEvent) bool {
	return func(ev jsonEvent) bool { return ev.Event == kind && c.isServer(ev) }
}

// Why a stuck socket stays, read from the socket: (a) a server that read
// end of file and never closed: read_eof, nothing unread; (b) one that
// never read what the peer sent before closing: 100 bytes unread. The
// times since data was last sent and received are at least the known
// quiet periods. Also without socket cookies (the tracepoint hook), where
// the socket is found by its addresses.
func TestStuckDiagnosis(t *testing.T) {
	attachModes(t, func(t *testing.T, attach string) {
		ln := listen(t, "tcp4", "127.0.0.1:0")
		const threshold = 300 * time.Millisecond
		p := startTracer(t, "closewait", "--attach", attach, "--port", portArg(ln),
			"--threshold", threshold.String(), "--flush-interval", "20ms")
		dialed := time.Now()
		eof, unread := dial(t, ln), dial(t, ln)
		established := time.Now() // both were established in between
		const quiet = 200 * time.Millisecond
		time.Sleep(quiet) // so that "since established" and "since the FIN" differ

		// The clients shut down their side and keep their sockets: an
		// orphan could be reset under the kernel's orphan limit.
		sent := time.Now()
		if _, err := unread.client.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		for _, c := range []conn{eof, unread} {
			if err := c.client.CloseWrite(); err != nil {
				t.Fatal(err)
			}
		}
		finned := time.Now() // the data and both FINs arrived between sent and now
		if n, err := eof.server.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("server read %d, %v; want EOF", n, err)
		}
		byeBefore := time.Now()
		if _, err := eof.server.Write([]byte("bye")); err != nil { // the client still reads
			t.Fatal(err)
		}
		byeAfter := time.Now()

		a := p.next(eventTimeout, "stuck of the server that read EOF", of("stuck", eof))
		aAt := time.Now()
		b := p.next(eventTimeout, "stuck of the server that never read", of("stuck", unread))
		bAt := time.Now()
		for _, c := range []struct {
			name   string
			ev     jsonEvent
			eof    bool
			unread uint64
		}{{"read EOF", a, true, 0}, {"never read", b, false, 100}} {
			ev := c.ev
			if ev.ReadEOF == nil || ev.UnreadBytes == nil || ev.SinceSendNS == nil || ev.SinceRecvNS == nil {
				t.Errorf("%s: stuck without a diagnosis: %v", c.name, ev)
				continue
			}
			if *ev.ReadEOF != c.eof || *ev.UnreadBytes != c.unread {
				t.Errorf("%s: read_eof %v unread_bytes %d, want %v and %d", c.name, *ev.ReadEOF, *ev.UnreadBytes, c.eof, c.unread)
			}
			t.Logf("%s: age %v since_send %v since_recv %v", c.name, time.Duration(*ev.AgeNS),
				time.Duration(*ev.SinceSendNS), time.Duration(*ev.SinceRecvNS))
		}
		// The socket is read when the report is made, at or after the
		// report's time and before this test received it: each time lies
		// between bounds measured here, whatever the machine's speed, to
		// the kernel's tick (tcp_info counts in jiffies, 4 ms at HZ=250).
		const tick = 20 * time.Millisecond
		within := func(what string, ns int64, report jsonEvent, received, from, to time.Time) {
			t.Helper()
			at := eventTime(t, report)
			lo, hi := at.Sub(to), received.Sub(from)
			if d := time.Duration(ns); d < lo-tick || d > hi+tick {
				t.Errorf("%s = %v, want within [%v, %v]", what, d, lo, hi)
			}
		}
		if a.SinceSendNS != nil && b.SinceSendNS != nil {
			// (a) sent "bye"; it never received data: since the
			// connection was established.
			within("(a) since_send", *a.SinceSendNS, a, aAt, byeBefore, byeAfter)
			within("(a) since_recv", *a.SinceRecvNS, a, aAt, dialed, established)
			// (b) received the data just before the FIN; it never sent.
			within("(b) since_recv", *b.SinceRecvNS, b, bAt, sent, finned)
			within("(b) since_send", *b.SinceSendNS, b, bAt, dialed, established)
			// The quiet period shows: each "since established" exceeds
			// the corresponding time since the last data.
			if *a.SinceRecvNS <= *a.SinceSendNS || *b.SinceSendNS <= *b.SinceRecvNS {
				t.Errorf("times since the connection was established are not the longer ones: (a) recv %v send %v, (b) send %v recv %v",
					time.Duration(*a.SinceRecvNS), time.Duration(*a.SinceSendNS), time.Duration(*b.SinceSendNS), time.Duration(*b.SinceRecvNS))
			}
		}
	})
}

// How sockets leave CLOSE-WAIT: (c) a server that writes after its peer
// closed fully gets a reset: abort, cause reset; (d) a process that exits
// holding its socket: app_close closed_by_exit; a close() call:
// closed_by_exit false; a socket destroyed (tcptrace kill's way): abort,
// cause destroyed.
func TestLeaveCauses(t *testing.T) {
	attachModes(t, func(t *testing.T, attach string) {
		ln := listen(t, "tcp4", "127.0.0.1:0")
		h := startHelper(t, "exit-holding", 0)
		child := h.cmd
		exitPort := strings.TrimSpace(h.line(t))
		p := startTracer(t, "closewait", "--all", "--attach", attach, "--port", portArg(ln), "--port", exitPort, "--threshold", "10s")

		// (c) The client closes fully; the server writes; the client's
		// orphan answers with a reset. The server still holds its socket:
		// its close, later, is the application's.
		reset := dial(t, ln)
		reset.client.Close()
		p.next(eventTimeout, "close_wait of the server written to", of("close_wait", reset))
		if _, err := reset.server.Write([]byte("too late")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		if _, err := reset.server.Read(buf); !errors.Is(err, syscall.EPIPE) && !errors.Is(err, io.EOF) {
			t.Logf("the server's next read: %v", err)
		}
		reset.server.Close()
		ab := p.next(eventTimeout, "close of the server written to", func(ev jsonEvent) bool {
			return (ev.Event == "abort" || ev.Event == "app_close") && reset.isServer(ev)
		})
		if ab.Event != "app_close" || !ab.PeerReset || ab.NewState != "CLOSE" || ab.Closer == nil || ab.Closer.PID != os.Getpid() {
			t.Errorf("write after the peer closed, then close: %v, want app_close with peer_reset by pid %d", ab, os.Getpid())
		}

		// (d) The helper exits holding its socket.
		cl, err := net.Dial("tcp4", "127.0.0.1:"+exitPort)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if err := cl.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		ex := p.next(eventTimeout, "app_close of the exiting helper", func(ev jsonEvent) bool {
			return ev.Event == "app_close" && fmt.Sprint(ev.LocalPort) == exitPort
		})
		if ex.ClosedByExit == nil || !*ex.ClosedByExit || ex.Closer == nil || ex.Closer.PID != child.Process.Pid {
			t.Errorf("exit with the socket open: %v, want closed_by_exit true, closer pid %d", ex, child.Process.Pid)
		}

		// A close() call.
		closed := dial(t, ln)
		if err := closed.client.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		p.next(eventTimeout, "close_wait of the server that closes", of("close_wait", closed))
		closed.server.Close()
		ac := p.next(eventTimeout, "app_close of the server that closes", of("app_close", closed))
		if ac.ClosedByExit == nil || *ac.ClosedByExit || ac.Closer == nil || ac.Closer.PID != os.Getpid() {
			t.Errorf("close(): %v, want closed_by_exit false, closer pid %d", ac, os.Getpid())
		}

		// Destroyed, as tcptrace kill does.
		d, err := tracer.NewDestroyer()
		if err != nil {
			t.Logf("no destroyer: %v", err)
			return
		}
		defer d.Close()
		killed := dial(t, ln)
		if err := killed.client.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		p.next(eventTimeout, "close_wait of the server destroyed", of("close_wait", killed))
		target := tracer.CloseWaitSocket{Family: events.FamilyIPv4,
			Local:  netip.MustParseAddrPort(killed.server.LocalAddr().String()),
			Remote: netip.MustParseAddrPort(killed.server.RemoteAddr().String())}
		rc, err := killed.server.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		rc.Control(func(fd uintptr) { target.Cookie, err = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) })
		if err != nil {
			t.Fatalf("SO_COOKIE: %v", err)
		}
		if res, err := d.Destroy([]tracer.CloseWaitSocket{target}); err != nil || res[target.Cookie] != tracer.Destroyed {
			t.Fatalf("destroy (%s): %v, %v", d.Method(), res, err)
		}
		ab = p.next(eventTimeout, "abort of the server destroyed", of("abort", killed))
		if ab.Cause != "destroyed" {
			t.Errorf("destroyed (%s): %v, want cause destroyed", d.Method(), ab)
		}
		// Never reported stuck (the threshold is 10 s), and still held by
		// this process: the abort names it.
		if ab.OwnerSource != "proc" || len(ab.Owner) != 1 || ab.Owner[0].PID != os.Getpid() {
			t.Errorf("destroyed (%s): %v, want its holder, pid %d", d.Method(), ab, os.Getpid())
		}
	})
}
