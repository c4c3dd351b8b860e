package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/internal/testenv"
)

// eventTimeout bounds every wait for an event or a condition. It is not a
// margin any verdict depends on: waits end as soon as what they wait for
// happens, and it only says when to give up. It is generous because the
// suite runs under qemu's emulation (about 10 times slower) on loaded
// machines.
const eventTimeout = 60 * time.Second

// The server lingers 300 ms after the client's FIN: close_wait, then
// app_close with that latency, closed by this process.
func TestCloseWaitAppCloseLatency(t *testing.T) {
	attachModes(t, func(t *testing.T, attach string) {
		ln := listen(t, "tcp4", "127.0.0.1:0")
		p := startTracer(t, "closewait", "--all", "--attach", attach, "--port", portArg(ln), "--threshold", "10s")
		c := dial(t, ln)

		const linger = 300 * time.Millisecond
		// On loopback the FIN is processed inside the client's close, so the
		// server enters CLOSE_WAIT before Close returns.
		t0 := time.Now()
		c.client.Close()
		start := time.Now()
		cw := p.closeWaitOf(c)
		time.Sleep(linger - time.Since(start))
		c.server.Close()
		// The FIN came between t0 and start, the close before now: the
		// latency lies within these bounds however slow the machine (in a
		// VM under emulation reading the close_wait alone can take longer
		// than the linger).
		upper := time.Since(t0)
		ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Event == "app_close" && c.isServer(ev) })

		if ac.Sock != cw.Sock {
			t.Errorf("app_close sock %q, close_wait sock %q: want the same socket id", ac.Sock, cw.Sock)
		}
		for _, ev := range []jsonEvent{cw, ac} {
			if ev.Family != "ipv4" || ev.LocalAddr != "127.0.0.1" || ev.RemoteAddr != "127.0.0.1" {
				t.Errorf("%s: family %s %s -> %s, want ipv4 127.0.0.1 -> 127.0.0.1", ev.Event, ev.Family, ev.LocalAddr, ev.RemoteAddr)
			}
			if ev.NetNS != ownNetNS(t) {
				t.Errorf("%s: netns %d, want %d", ev.Event, ev.NetNS, ownNetNS(t))
			}
		}
		if ac.FinToCloseNS == nil {
			t.Fatalf("app_close without fin_to_close_ns: %v", ac)
		}
		if got := time.Duration(*ac.FinToCloseNS); got < linger || got > upper {
			t.Errorf("fin_to_close_ns = %v, want within [%v, %v]", got, linger, upper)
		}
		if ac.Closer == nil || ac.Closer.PID != os.Getpid() {
			t.Errorf("closer = %+v, want pid %d (this test process)", ac.Closer, os.Getpid())
		}
		if ac.NewState != "LAST_ACK" || *ac.WasStuck || !*ac.AgeKnown {
			t.Errorf("app_close new_state=%s was_stuck=%v age_known=%v, want LAST_ACK false true",
				ac.NewState, *ac.WasStuck, *ac.AgeKnown)
		}
		// The client never enters CLOSE_WAIT: in closewait mode nothing
		// about it crosses to user space.
		for _, ev := range p.drain() {
			if c.isClient(ev) {
				t.Errorf("closewait mode reported the client socket: %v", ev)
			}
		}
	})
}

// A server that does not close is reported stuck after the threshold,
// again every --repeat, and its late close says was_stuck.
func TestStuckThenClose(t *testing.T) {
	attachModes(t, func(t *testing.T, attach string) {
		ln := listen(t, "tcp4", "127.0.0.1:0")
		// Stuck reports wait for the ring buffer to be read empty, so they
		// come up to one flush interval late: keep it short.
		p := startTracer(t, "closewait", "--all", "--attach", attach, "--port", portArg(ln),
			"--threshold", "200ms", "--repeat", "150ms", "--flush-interval", "20ms")
		c := dial(t, ln)
		c.client.Close()
		cw := p.closeWaitOf(c)

		isStuck := func(ev jsonEvent) bool { return ev.Event == "stuck" && ev.Sock == cw.Sock }
		first := p.next(eventTimeout, "stuck", isStuck)
		if *first.AgeNS < int64(200*time.Millisecond) || *first.ThresholdNS != int64(200*time.Millisecond) || !*first.AgeKnown {
			t.Errorf("first stuck: age_ns=%d threshold_ns=%d age_known=%v, want age >= 200ms, threshold 200ms, known",
				*first.AgeNS, *first.ThresholdNS, *first.AgeKnown)
		}
		second := p.next(eventTimeout, "repeated stuck", isStuck)
		// Reports are due at the threshold, then every repeat after it:
		// each comes at or after its due time. (How late depends on the
		// machine; that a late first report does not push the second back
		// is track's TestRepeatAfterLateReport, on a clock of its own.)
		if age := time.Duration(*second.AgeNS); age < 350*time.Millisecond || age <= time.Duration(*first.AgeNS) {
			t.Errorf("repeated stuck at age %v (the first at %v), want due at 350ms: threshold 200ms + repeat 150ms",
				age, time.Duration(*first.AgeNS))
		}
		c.server.Close()
		ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Event == "app_close" && ev.Sock == cw.Sock })
		if !*ac.WasStuck {
			t.Errorf("app_close was_stuck = false after stuck reports: %v", ac)
		}
		if *ac.FinToCloseNS < *second.AgeNS {
			t.Errorf("fin_to_close_ns %d below the last stuck age %d", *ac.FinToCloseNS, *second.AgeNS)
		}
		for _, ev := range p.drain() {
			if isStuck(ev) && ev.Time > ac.Time {
				t.Errorf("stuck reported after the socket was closed: %v", ev)
			}
		}
	})
}

// A close that happens before the threshold but is still in the ring
// buffer when the threshold passes must not be reported stuck. Here the
// FIN events are read at once (a burst fills a quarter of a 4 KiB ring,
// which wakes the reader), the close at half the threshold is read only at
// the next poll, a flush interval later, well past the threshold: a stuck
// report driven by a timer rather than by what was read would fire in
// between. A machine too slow for that order of events (the FINs read
// late, or the close itself after the threshold) proves nothing: the test
// then runs again with every duration doubled.
func TestCloseInRingIsNotOvertakenByStuck(t *testing.T) {
	for threshold := 300 * time.Millisecond; ; threshold *= 2 {
		if closeInRing(t, threshold) {
			return
		}
		if threshold >= 1200*time.Millisecond { // the flush interval stays within its 10s bound
			t.Fatalf("even with a %v threshold the machine was too slow to close a socket before it", threshold)
		}
		t.Logf("too slow for a %v threshold: again with %v", threshold, 2*threshold)
	}
}

// closeInRing runs TestCloseInRingIsNotOvertakenByStuck's scenario once;
// false when the machine was too slow for it to mean anything.
func closeInRing(t *testing.T, threshold time.Duration) bool {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	flush := 7 * threshold
	p := startTracer(t, "closewait", "--all", "--port", portArg(ln), "--threshold", threshold.String(),
		"--flush-interval", flush.String(), "--ring-buffer-size", "4096")
	defer p.stop()
	target := dial(t, ln)
	var fillers []conn
	for range 12 {
		fillers = append(fillers, dial(t, ln))
	}
	start := time.Now()
	target.client.Close()
	for _, f := range fillers {
		f.client.Close()
	}
	p.closeWaitOf(target)
	if waited := time.Since(start); waited > threshold/2 {
		t.Logf("FIN events read after %v: not woken by the burst in time", waited)
		return false
	}
	time.Sleep(threshold/2 - time.Since(start))
	target.server.Close()
	ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Event == "app_close" && target.isServer(ev) })
	if time.Duration(*ac.FinToCloseNS) >= threshold {
		t.Logf("closed %v after the FIN: not before the threshold", time.Duration(*ac.FinToCloseNS))
		return false
	}
	if *ac.WasStuck {
		t.Errorf("app_close after %v reported was_stuck with a %v threshold", time.Duration(*ac.FinToCloseNS), threshold)
	}
	// The fillers stay in CLOSE-WAIT: they show stuck reporting still works.
	stuck := map[string]bool{}
	for len(stuck) < len(fillers) {
		ev := p.next(eventTimeout, "stuck of the fillers", func(ev jsonEvent) bool { return ev.Event == "stuck" })
		if ev.Sock == ac.Sock {
			t.Errorf("stuck reported for a socket closed before the threshold: %v", ev)
		}
		stuck[ev.Sock] = true
	}
	for _, ev := range p.drain() {
		if ev.Event == "stuck" && ev.Sock == ac.Sock {
			t.Errorf("stuck reported for a socket closed before the threshold: %v", ev)
		}
	}
	return true
}

func TestCloseWaitIPv6(t *testing.T) {
	attachModes(t, testCloseWaitIPv6)
}

func testCloseWaitIPv6(t *testing.T, attach string) {
	ln := listen(t, "tcp6", "[::1]:0")
	p := startTracer(t, "closewait", "--all", "--attach", attach, "--port", portArg(ln), "--threshold", "10s")
	c := dial(t, ln)
	c.client.Close()
	cw := p.closeWaitOf(c)
	c.server.Close()
	ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Event == "app_close" && ev.Sock == cw.Sock })
	for _, ev := range []jsonEvent{cw, ac} {
		if ev.Family != "ipv6" || ev.LocalAddr != "::1" || ev.RemoteAddr != "::1" {
			t.Errorf("%s: family %s %s -> %s, want ipv6 ::1 -> ::1", ev.Event, ev.Family, ev.LocalAddr, ev.RemoteAddr)
		}
	}
	if ac.Closer == nil || ac.Closer.PID != os.Getpid() {
		t.Errorf("closer = %+v, want pid %d", ac.Closer, os.Getpid())
	}
}

// A dual-stack IPv6 socket carrying IPv4 reports IPv4 addresses.
func TestCloseWaitV4MappedShownAsIPv4(t *testing.T) {
	ln := listen(t, "tcp", "[::]:0")
	p := startTracer(t, "closewait", "--all", "--port", portArg(ln), "--threshold", "10s")
	cl, err := net.Dial("tcp4", "127.0.0.1:"+portArg(ln))
	if err != nil {
		t.Skipf("no dual-stack listener here: %v", err)
	}
	srv, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c := conn{port: listenerPort(ln), clientPort: cl.LocalAddr().(*net.TCPAddr).Port}
	cl.Close()
	cw := p.closeWaitOf(c)
	if cw.Family != "ipv4" || cw.LocalAddr != "127.0.0.1" || cw.RemoteAddr != "127.0.0.1" {
		t.Errorf("v4-mapped socket reported as %s %s -> %s, want ipv4 127.0.0.1 -> 127.0.0.1", cw.Family, cw.LocalAddr, cw.RemoteAddr)
	}
}

// Closing with unread data sends RST (CLOSE_WAIT -> CLOSE): still the
// application's close.
func TestAppCloseWithUnreadDataResets(t *testing.T) {
	attachModes(t, func(t *testing.T, attach string) {
		ln := listen(t, "tcp4", "127.0.0.1:0")
		p := startTracer(t, "closewait", "--all", "--attach", attach, "--port", portArg(ln), "--threshold", "10s")
		c := dial(t, ln)
		if _, err := c.client.Write([]byte("never read")); err != nil {
			t.Fatal(err)
		}
		c.client.Close()
		cw := p.closeWaitOf(c)
		c.server.Close()
		ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Sock == cw.Sock && ev.Event != "close_wait" })
		if ac.Event != "app_close" || ac.NewState != "CLOSE" {
			t.Fatalf("close with unread data reported as %s -> %s, want app_close -> CLOSE: %v", ac.Event, ac.NewState, ac)
		}
		if ac.Closer == nil || ac.Closer.PID != os.Getpid() {
			t.Errorf("closer = %+v, want pid %d", ac.Closer, os.Getpid())
		}
	})
}

// SO_LINGER with a zero timeout makes close() reset the connection: still
// the application's close.
func TestAppCloseWithZeroLingerResets(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	p := startTracer(t, "closewait", "--all", "--port", portArg(ln), "--threshold", "10s")
	c := dial(t, ln)
	if err := c.server.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.client.Close()
	cw := p.closeWaitOf(c)
	c.server.Close()
	ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Sock == cw.Sock && ev.Event != "close_wait" })
	if ac.Event != "app_close" || ac.NewState != "CLOSE" || ac.Closer == nil || ac.Closer.PID != os.Getpid() {
		t.Fatalf("close with SO_LINGER 0 reported as %v, want app_close -> CLOSE by pid %d", ac, os.Getpid())
	}
}

// A process that exits holding a socket in CLOSE-WAIT closes it in its
// exit path: app_close, closed by that process.
func TestProcessExitIsAppClose(t *testing.T) {
	testenv.RequirePrivileged(t)
	child := exec.Command(os.Args[0])
	child.Env = append(os.Environ(), helperEnv+"=exit-holding")
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Wait()
	defer child.Process.Kill()
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		t.Fatal("helper printed no port")
	}
	port := strings.TrimSpace(lines.Text())
	p := startTracer(t, "closewait", "--all", "--port", port, "--threshold", "10s")
	cl, err := net.Dial("tcp4", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool {
		return ev.Event == "app_close" && fmt.Sprint(ev.LocalPort) == port
	})
	if ac.Closer == nil || ac.Closer.PID != child.Process.Pid {
		t.Errorf("closer = %+v, want the exiting helper, pid %d (test pid %d)", ac.Closer, child.Process.Pid, os.Getpid())
	}
	if ac.FinToCloseNS == nil || *ac.FinToCloseNS < int64(200*time.Millisecond) {
		t.Errorf("fin_to_close_ns = %v, want >= 200ms (the helper waits before exiting)", ac.FinToCloseNS)
	}
}

// shutdown(SHUT_WR) ends CLOSE-WAIT (CLOSE_WAIT -> LAST_ACK) although the
// descriptor stays open: reported as the application's close.
func TestShutdownWriteIsAppClose(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	p := startTracer(t, "closewait", "--all", "--port", portArg(ln), "--threshold", "10s")
	c := dial(t, ln)
	c.client.Close()
	cw := p.closeWaitOf(c)
	if err := c.server.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Sock == cw.Sock && ev.Event != "close_wait" })
	if ac.Event != "app_close" || ac.NewState != "LAST_ACK" || ac.Closer == nil || ac.Closer.PID != os.Getpid() {
		t.Fatalf("shutdown(SHUT_WR) reported as %v, want app_close -> LAST_ACK by pid %d", ac, os.Getpid())
	}
}

// The peer resets a socket in CLOSE-WAIT that no application holds (it
// waits in its listener's accept queue): nobody will close it, so this is
// an abort, cause reset. (A held socket the peer resets is followed until
// its application closes it: TestPeerResetThenClose.)
func TestPeerResetIsAbort(t *testing.T) {
	ln := listen(t, "tcp4", "127.0.0.1:0")
	p := startTracer(t, "closewait", "--all", "--port", portArg(ln), "--threshold", "10s")
	cl, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	port := cl.LocalAddr().(*net.TCPAddr).Port
	queued := func(ev jsonEvent) bool { return ev.LocalPort == listenerPort(ln) && ev.RemotePort == port }
	if err := cl.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	cw := p.next(eventTimeout, "close_wait of the queued socket", func(ev jsonEvent) bool { return ev.Event == "close_wait" && queued(ev) })
	// Closing with a zero linger sends a reset.
	if err := cl.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	ev := p.next(eventTimeout, "abort", func(ev jsonEvent) bool { return ev.Sock == cw.Sock && ev.Event != "close_wait" })
	if ev.Event != "abort" || ev.Cause != "reset" || ev.NewState != "CLOSE" || !*ev.AgeKnown || ev.OwnerSource != "no_file" {
		t.Fatalf("peer reset of a queued socket reported as %v, want abort -> CLOSE, cause reset, with age, no file", ev)
	}
}

// 2,000 sockets sit in CLOSE-WAIT together, then all close: exactly 2,000
// app_close events, nothing lost. (A lost event may report recursion misses
// alone: the kernel counts those per program, for all sockets on the host.
// Any that hit this test's sockets would break the exact counts.)
func TestManySocketsNoneLost(t *testing.T) {
	const n = 2000
	ln := listen(t, "tcp4", "127.0.0.1:0")
	p := startTracer(t, "closewait", "--all", "--port", portArg(ln), "--threshold", "1m")
	conns := make([]conn, 0, n)
	for range n {
		conns = append(conns, dial(t, ln))
	}
	for _, c := range conns {
		c.client.Close()
	}
	inCW := map[string]bool{}
	for len(inCW) < n {
		ev := p.next(eventTimeout, "close_wait", func(ev jsonEvent) bool { return ev.Event == "close_wait" })
		inCW[ev.Sock] = true
	}
	for _, c := range conns {
		c.server.Close()
	}
	closed := map[string]bool{}
	for len(closed) < n {
		ev := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Event != "close_wait" && ev.Event != "lost" })
		if ev.Event != "app_close" || !inCW[ev.Sock] || closed[ev.Sock] {
			t.Fatalf("unexpected event after %d app_close: %v", len(closed), ev)
		}
		closed[ev.Sock] = true
	}
	counts := map[string]int{}
	for _, ev := range p.drain() {
		counts[ev.Event]++
		if ev.Event == "lost" && !onlyRecursionMisses(ev) {
			t.Errorf("events lost: %v", ev)
		}
	}
	delete(counts, "lost")
	if counts["close_wait"] != n || counts["app_close"] != n || len(counts) != 2 {
		t.Errorf("events = %v, want exactly %d close_wait and %d app_close", counts, n, n)
	}
}
