package tracer_test

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/tracer"
)

// peersTCPState is the kernel's TCP state of c, 0 if unknown.
func peersTCPState(c *net.TCPConn) uint8 {
	var state uint8
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	})
	return state
}

func peersFind(peers []tracer.PeerSockets, netns uint32, remote netip.AddrPort) (tracer.PeerSockets, bool) {
	for _, p := range peers {
		if p.NetNS == netns && p.Remote == remote {
			return p, true
		}
	}
	return tracer.PeerSockets{}, false
}

// TestListPeers: clients of servers that never close wait in FIN_WAIT2,
// counted against the server's address and port, those closed by their
// owner (time-wait sockets in the kernel) and those only shut down for
// writing (full sockets) alike, each with its age; clients that closed
// first and whose server closed too are in TIME_WAIT.
func TestListPeers(t *testing.T) {
	testenv.RequirePrivileged(t)
	ino, inNS := testNetNS(t)

	var (
		held                     []net.Conn // never closed by the leaky servers
		shut                     []*net.TCPConn
		closedAP, shutAP, goodAP netip.AddrPort
	)
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
		for _, c := range shut {
			c.Close()
		}
	})
	listen := func(ap *netip.AddrPort) net.Listener {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		*ap = l.Addr().(*net.TCPAddr).AddrPort()
		return l
	}
	connect := func(l net.Listener, ap netip.AddrPort) (client *net.TCPConn, server net.Conn) {
		c, err := net.Dial("tcp4", ap.String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.TCPConn), s
	}
	var firstFIN, lastFIN time.Time // the FIN_WAIT2 sockets sent their FINs in between
	inNS(func() {
		firstFIN = time.Now()
		// t.Fatal on this goroutine ends it, and the test below.
		closed, shutL, good := listen(&closedAP), listen(&shutAP), listen(&goodAP)
		defer closed.Close()
		defer shutL.Close()
		defer good.Close()
		for range 2 {
			c, s := connect(closed, closedAP)
			held = append(held, s)
			c.Close()
		}
		for range 3 {
			c, s := connect(shutL, shutAP)
			held = append(held, s)
			shut = append(shut, c)
			c.CloseWrite()
		}
		lastFIN = time.Now()
		for range 4 {
			c, s := connect(good, goodAP)
			c.Close()
			s.SetReadDeadline(time.Now().Add(waitTimeout))
			if _, err := io.Copy(io.Discard, s); err != nil {
				t.Error(err)
			}
			s.Close()
		}
	})
	if t.Failed() || len(shut) != 3 {
		t.FailNow()
	}
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(time.Millisecond) {
		if st := peersTCPState(shut[0]); st == 5 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("a client shut down for writing is in state %d, want FIN_WAIT2 (5)", st)
		}
	}
	time.Sleep(time.Second) // so that the FIN_WAIT2 sockets' ages are well above 0

	// check checks a listing made between from and to.
	check := func(t *testing.T, peers []tracer.PeerSockets, from, to time.Time) {
		t.Helper()
		for _, want := range []struct {
			what               string
			ap                 netip.AddrPort
			finWait2, timeWait int
		}{
			{"leaky server, clients closed", closedAP, 2, 0},
			{"leaky server, clients shut down", shutAP, 3, 0},
			{"good server", goodAP, 0, 4},
		} {
			p, ok := peersFind(peers, ino, want.ap)
			if !ok {
				t.Errorf("%s: no peer %s in netns %d: %+v", want.what, want.ap, ino, peers)
				continue
			}
			t.Logf("%s: %+v", want.what, p)
			if p.FinWait2 != want.finWait2 || p.TimeWait != want.timeWait {
				t.Errorf("%s %s: %d FIN_WAIT2 and %d TIME_WAIT sockets, want %d and %d",
					want.what, want.ap, p.FinWait2, p.TimeWait, want.finWait2, want.timeWait)
			}
			switch {
			case want.finWait2 == 0 && p.OldestFinWait2 != 0:
				t.Errorf("%s: oldest FIN_WAIT2 %v without one", want.what, p.OldestFinWait2)
			case want.finWait2 > 0:
				// From tcp_info's last ACK received, in jiffies.
				const tick = 20 * time.Millisecond
				if lo, hi := from.Sub(lastFIN)-tick, to.Sub(firstFIN)+tick; p.OldestFinWait2 < lo || p.OldestFinWait2 > hi {
					t.Errorf("%s: oldest FIN_WAIT2 %v, want within [%v, %v] (measured around the FINs and the listing)", want.what, p.OldestFinWait2, lo, hi)
				}
			}
		}
		// Nothing else in the namespace: the leaky servers' sides are in
		// CLOSE-WAIT, the good server's gone (it closed second).
		for _, p := range peers {
			if p.NetNS == ino && p.Remote != closedAP && p.Remote != shutAP && p.Remote != goodAP {
				t.Errorf("unexpected peer in the test namespace: %+v", p)
			}
		}
	}
	t.Run("netns", func(t *testing.T) {
		from := time.Now()
		peers, err := tracer.ListPeers(ino)
		if err != nil {
			t.Fatal(err)
		}
		check(t, peers, from, time.Now())
		for _, p := range peers {
			if p.NetNS != ino {
				t.Errorf("peer of another namespace listed: %+v", p)
			}
		}
	})
	t.Run("node", func(t *testing.T) {
		from := time.Now()
		peers, err := tracer.ListPeers(0)
		if err != nil {
			t.Logf("ListPeers(0): %v", err) // others' namespaces come and go
		}
		check(t, peers, from, time.Now())
	})
}

func TestListPeersUnknownNetNS(t *testing.T) {
	testenv.RequirePrivileged(t)
	if _, err := tracer.ListPeers(1); err == nil {
		t.Fatal("ListPeers of a namespace that does not exist: no error")
	}
}
