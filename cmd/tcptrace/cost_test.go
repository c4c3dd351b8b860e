package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/report"
)

// fullListener listens on loopback with a backlog of 1 and never accepts;
// n clients connect without waiting (non-blocking), so that its accept
// queue fills (2: the kernel admits backlog+1) and the rest of the SYNs
// are dropped, again at each client's retry. It returns the port and the
// listener's descriptor.
func fullListener(t *testing.T, n int) (port, fd int) {
	t.Helper()
	port, fd = rawListener(t, 1)
	for range n {
		c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(c) })
		if err := unix.Connect(c, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil && err != unix.EINPROGRESS {
			t.Fatal(err)
		}
	}
	return port, fd
}

// A listener with a backlog of 1 that never accepts, hit by 40 clients:
// closewait says once that it drops connections (its queue, its holder:
// this process and the listener's fd), and the metrics show its queue
// full, its limit and its drops, under this process's workload.
func TestListenerDropsReported(t *testing.T) {
	testenv.RequirePrivileged(t)
	port, fd := fullListener(t, 40)
	p, base := startWithMetrics(t, "--port", strconv.Itoa(port))
	// The clients' SYNs are retried (1 s, 3 s, 7 s... apart): the drops go
	// on after tcptrace first looks, which is when they count as news.
	ev := p.next(eventTimeout, "a listen_drops event", func(ev jsonEvent) bool { return ev.Event == "listen_drops" })
	l := ev.Listener
	if l == nil || l.LocalPort != port || l.Queue != 2 || l.Backlog != 1 || l.Drops == 0 || ev.Dropped == 0 || ev.Dropped > l.Drops ||
		ev.IntervalNS <= 0 || len(l.Owner) != 1 || l.Owner[0].PID != os.Getpid() || l.Owner[0].FD != fd {
		t.Errorf("listen_drops %+v (listener %+v): want our listener (pid %d fd %d), queue 2 of 1, drops", ev, l, os.Getpid(), fd)
	}
	want := map[string]string{"port": strconv.Itoa(port), "cgroup": ownCgroup(t)}
	for deadline := time.Now().Add(eventTimeout); ; time.Sleep(50 * time.Millisecond) {
		fams := scrape(t, base)
		q := series(fams, "tcptrace_listen_queue_length", want)
		lim := series(fams, "tcptrace_listen_queue_limit", want)
		d := series(fams, "tcptrace_listen_drops_total", want)
		if len(q) == 1 && len(lim) == 1 && len(d) == 1 && value(q[0]) == 2 && value(lim[0]) == 1 && value(d[0]) >= float64(l.Drops) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen metrics for %v: queue %v, limit %v, drops %v; want 2, 1 and at least %d", want, q, lim, d, l.Drops)
		}
	}
	// top lists it among the listeners in trouble.
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	listed := func(r report.Report) bool {
		return slices.ContainsFunc(r.Listeners, func(x report.Listener) bool { return x.Addr == addr })
	}
	r := topUntil(t, "the full listener", listed, "--port", strconv.Itoa(port))
	i := slices.IndexFunc(r.Listeners, func(x report.Listener) bool { return x.Addr == addr })
	if x := r.Listeners[i]; x.Queue != 2 || x.Limit != 1 || x.Drops < l.Drops || x.Workload.Cgroup != ownCgroup(t) {
		t.Errorf("top: listener %+v, want queue 2 of 1, at least %d drops, in cgroup %s", x, l.Drops, ownCgroup(t))
	}
	// Once: the drops going on are no new episode.
	for _, e := range p.drain() {
		if e.Event == "listen_drops" && e.Listener != nil && e.Listener.LocalPort == port && e.Time != ev.Time {
			t.Errorf("a second listen_drops for the same drops within a minute: %+v", e)
		}
	}
}

// emfileLeak is a helper: a server limited to 32 descriptors that never
// closes what it accepts, so that accept() soon fails with EMFILE; it
// retries, as Go's http.Server does, and says "emfile" at the first
// failure.
func emfileLeak(fail func(error)) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	// Go raises the soft limit to the hard one at start-up: lower both.
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 32, Max: 32}); err != nil {
		fail(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	var held []net.Conn
	said := false
	for {
		c, err := ln.Accept()
		if err != nil {
			if !said && errors.Is(err, unix.EMFILE) {
				fmt.Println("emfile")
				said = true
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		held = append(held, c)
	}
}

// A server with RLIMIT_NOFILE 32 that leaks until accept fails: closewait
// reports its first failure (the listener, the process, emfile) once, and
// tcptrace_accept_failures_total counts them all.
func TestAcceptFailsForWantOfDescriptors(t *testing.T) {
	testenv.RequirePrivileged(t)
	p, base := startWithMetrics(t)
	h := startHelper(t, "emfile-leak", 0)
	port, err := strconv.Atoi(h.line(t))
	if err != nil {
		t.Fatal(err)
	}
	pid := h.cmd.Process.Pid
	var clients []net.Conn
	for range 40 {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		clients = append(clients, c)
	}
	if l := h.line(t); l != "emfile" {
		t.Fatalf("helper said %q, want emfile", l)
	}
	ev := p.next(eventTimeout, "the accept_failed event", func(ev jsonEvent) bool { return ev.Event == "accept_failed" && ev.LocalPort == port })
	if ev.Reason != "emfile" || ev.Task == nil || ev.Task.PID != pid || !slices.Contains(ev.ownerPIDs(), pid) || ev.SocketInode == 0 {
		t.Errorf("accept_failed %+v: want emfile, by the helper (pid %d), which holds the listener", ev, pid)
	}
	want := map[string]string{"port": strconv.Itoa(port), "reason": "emfile"}
	for deadline := time.Now().Add(eventTimeout); ; time.Sleep(50 * time.Millisecond) {
		// The helper retries every 10 ms: the count goes on rising.
		if s := series(scrape(t, base), "tcptrace_accept_failures_total", want); len(s) == 1 && value(s[0]) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no tcptrace_accept_failures_total%v of 2 or more", want)
		}
	}
	for _, e := range p.drain() {
		if e.Event == "accept_failed" && e.LocalPort == port && e.Time != ev.Time {
			t.Errorf("a second accept_failed for the same process and listener: %+v", e)
		}
	}
	// The clients give up: what the server accepted, and what waits in its
	// queue, stays in CLOSE-WAIT. top says its holder has run out.
	for _, c := range clients {
		c.Close()
	}
	exhausted := func(r report.Report) bool { row := rowOf(r, port); return row != nil && row.Stuck > 0 && row.Exhausted }
	row := rowOf(topUntil(t, "the leak's holder exhausted", exhausted, "--threshold", "200ms", "--port", strconv.Itoa(port)), port)
	if len(row.Holders) == 0 || row.Holders[0].PID != pid || row.Holders[0].AcceptFailures == 0 || row.ExhaustionNever {
		t.Errorf("top: row %+v, want the helper (pid %d) first among the holders, with its accept() failures", row, pid)
	}
}

// The client of a leaked connection, when it is on this host: a stuck
// report names the process holding the other end (this test, which shut
// down its side and keeps the socket), its state FIN_WAIT2; a client that
// closed its descriptor names nobody.
func TestStuckNamesTheLocalClient(t *testing.T) {
	_, port := leakServer(t)
	p := startTracer(t, "closewait", "--port", strconv.Itoa(port), "--threshold", "200ms")
	held, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.(*net.TCPConn).CloseWrite()
	closed, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	heldPort, closedPort := held.LocalAddr().(*net.TCPAddr).Port, closed.LocalAddr().(*net.TCPAddr).Port
	closed.Close()
	for range 2 {
		ev := p.next(eventTimeout, "a stuck report", func(ev jsonEvent) bool { return ev.Event == "stuck" && ev.LocalPort == port })
		pr := ev.Peer
		switch {
		case ev.RemotePort == closedPort:
			// Its end is the kernel's alone now (a time-wait socket, which
			// sock_diag may not find by address): nobody to name.
			if pr != nil && (pr.SocketInode != 0 || len(pr.Owner) != 0) {
				t.Errorf("peer of the closed client %+v: want no holder", pr)
			}
		case pr == nil:
			t.Errorf("stuck %+v: no peer (held client port %d)", ev, heldPort)
		case ev.RemotePort == heldPort:
			if pr.LocalPort != heldPort || pr.State != "FIN_WAIT2" || pr.SocketInode == 0 || len(pr.Owner) != 1 || pr.Owner[0].PID != os.Getpid() {
				t.Errorf("peer %+v: want our socket in FIN_WAIT2, held by us (pid %d)", pr, os.Getpid())
			}
		default:
			t.Errorf("stuck of an unknown client: %+v", ev)
		}
	}
}
