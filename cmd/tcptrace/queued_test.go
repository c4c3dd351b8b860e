package main

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/report"
)

// queuedLeak listens with a backlog of 4 and never accepts; n clients
// connect and close their side, so that n sockets wait in the accept queue
// in CLOSE-WAIT, held by no process. It returns the port and the
// listener's descriptor.
func queuedLeak(t *testing.T, n int) (port, fd int) {
	t.Helper()
	port, fd = rawListener(t, 4)
	for range n {
		c, err := net.Dial("tcp4", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	faultWait(t, "the queued sockets in CLOSE-WAIT", func() bool { cw, _ := closeWaitOnPort(t, port); return cw == n })
	return port, fd
}

// checkListener checks that ev names our listener (pid, fd, its queue of
// n and backlog of 4) as the culprit of a queued socket.
func checkListener(t *testing.T, what string, ev jsonEvent, port, fd, n int) {
	t.Helper()
	l := ev.Listener
	if ev.OwnerSource != "no_file" || l == nil || l.LocalPort != port || l.Queue != n || l.Backlog != 4 ||
		len(l.Owner) != 1 || l.Owner[0].PID != os.Getpid() || l.Owner[0].FD != fd {
		t.Errorf("%s: %v (listener %+v), want no_file with our listener (pid %d fd %d, queue %d of 4)", what, ev, l, os.Getpid(), fd, n)
	}
}

// Sockets that wait in the accept queue of a listener that does not
// accept: the stuck reports and top name that listener's holder, and kill
// leaves them alone by default, says why in one line and names the
// listener (destroying them frees nothing: the queue stays full); --pid
// of the listener's process finds them; --include-queued destroys them.
func TestQueuedSocketsNameTheListener(t *testing.T) {
	testenv.RequirePrivileged(t)
	const n = 3
	port, fd := queuedLeak(t, n)

	p := startTracer(t, "closewait", "--port", strconv.Itoa(port), "--threshold", "200ms")
	for range n {
		st := p.next(eventTimeout, "a queued socket's stuck report", func(ev jsonEvent) bool { return ev.Event == "stuck" && ev.LocalPort == port })
		checkListener(t, "stuck", st, port, fd, n)
	}
	p.stop()
	// top names the holder once it finds the sockets stuck: it is given
	// longer where a second is not enough for that.
	allStuck := func(r report.Report) bool { row := rowOf(r, port); return row != nil && row.Stuck == n }
	if row := rowOf(topUntil(t, "the queued sockets stuck", allStuck, "--threshold", "200ms", "--port", strconv.Itoa(port)), port); len(row.Holders) == 0 || row.Holders[0].PID != os.Getpid() {
		t.Errorf("top: row %+v, want the listener's holder (pid %d) among the holders", row, os.Getpid())
	}

	evs, stderr, code := kill(t, "--older-than", "0s", "--any-age", "--port", strconv.Itoa(port), "--yes")
	if code != 0 || len(evs) != n {
		t.Fatalf("kill: exit %d, %d events, want 0 and %d:\n%s", code, len(evs), n, stderr)
	}
	for _, ev := range evs {
		if ev.Event != "not_destroyed" || ev.Reason != "in_accept_queue" {
			t.Errorf("kill: %v, want not_destroyed, in_accept_queue", ev)
		}
		checkListener(t, "kill", ev, port, fd, n)
	}
	var warn []string
	for _, line := range strings.Split(stderr, "\n") {
		if strings.Contains(line, "accept queue") && strings.Contains(line, "level=WARN") {
			warn = append(warn, line)
		}
	}
	if len(warn) != 1 || !strings.Contains(warn[0], "pid="+strconv.Itoa(os.Getpid())) || !strings.Contains(warn[0], "fd="+strconv.Itoa(fd)) ||
		!strings.Contains(warn[0], "queue="+strconv.Itoa(n)) || !strings.Contains(warn[0], "backlog=4") {
		t.Errorf("kill's stderr: %q, want one warning naming the listener (pid, fd, queue %d, backlog 4)", stderr, n)
	}
	if cw, _ := closeWaitOnPort(t, port); cw != n {
		t.Errorf("after kill: %d sockets in CLOSE-WAIT, want the %d queued ones left alone", cw, n)
	}

	evs, _, code = kill(t, "--older-than", "0s", "--any-age", "--pid", strconv.Itoa(os.Getpid()), "--port", strconv.Itoa(port), "--dry-run")
	if code != 0 || len(evs) != n {
		t.Errorf("kill --pid of the listener's process: exit %d, %v, want the %d queued sockets", code, evs, n)
	}

	evs, stderr, code = kill(t, "--older-than", "0s", "--any-age", "--port", strconv.Itoa(port), "--include-queued", "--yes")
	destroyed := 0
	for _, ev := range evs {
		if ev.Event == "destroyed" {
			destroyed++
		}
	}
	if code != 0 || destroyed != n || !strings.Contains(stderr, "--include-queued: destroying") {
		t.Errorf("kill --include-queued: exit %d, %d destroyed, want %d and a warning:\n%s", code, destroyed, n, stderr)
	}
}

// rawListener listens on a free loopback port with the given backlog,
// through the system calls (not Go's net, which asks for SOMAXCONN), and
// returns the port and descriptor; closed when the test ends.
func rawListener(t *testing.T, backlog int) (port, fd int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*unix.SockaddrInet4).Port, fd
}
