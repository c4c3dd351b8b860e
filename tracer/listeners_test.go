package tracer_test

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/cgroup"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/tracer"
)

// A listener with a backlog of 1 that never accepts, hit by 40 clients:
// its accept queue is full (2: the kernel admits backlog+1), the rest of
// the clients' SYNs are dropped and counted against it, and it is listed
// with its creator's cgroup.
func TestListenerQueueAndDrops(t *testing.T) {
	testenv.RequirePrivileged(t)
	ino, inNS := testNetNS(t)
	var lfd, port int
	var clients []int
	t.Cleanup(func() {
		for _, fd := range clients {
			unix.Close(fd)
		}
		if lfd > 0 {
			unix.Close(lfd)
		}
	})
	inNS(func() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Error(err)
			return
		}
		lfd = fd
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Error(err)
			return
		}
		if err := unix.Listen(fd, 1); err != nil {
			t.Error(err)
			return
		}
		sa, _ := unix.Getsockname(fd)
		port = sa.(*unix.SockaddrInet4).Port
		for range 40 {
			c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Error(err)
				return
			}
			clients = append(clients, c)
			// In progress: a client whose SYN is dropped retries for a
			// minute; closing it at the end is enough.
			if err := unix.Connect(c, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil && err != unix.EINPROGRESS {
				t.Error(err)
				return
			}
		}
	})
	if t.Failed() {
		return
	}
	self, err := cgroup.SelfID()
	if err != nil {
		t.Fatal(err)
	}
	var l events.Listener
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		byNS, err := tracer.ListListeners(ino)
		if err != nil {
			t.Fatal(err)
		}
		var ok bool
		for _, x := range byNS[ino] {
			if int(x.Local.Port()) == port {
				l, ok = x, true
			}
		}
		if !ok {
			t.Fatalf("listener on port %d not listed: %+v", port, byNS[ino])
		}
		if l.Queue == 2 && l.Drops > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listener %+v: want its queue full (2 of backlog 1) and drops counted", l)
		}
	}
	if l.Backlog != 1 || l.Inode == 0 || l.CgroupID != self {
		t.Errorf("listener %+v: want backlog 1, an inode and our cgroup %d", l, self)
	}
}
