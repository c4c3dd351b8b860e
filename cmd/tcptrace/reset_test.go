package main

import (
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/testenv"
)

// resetByPeer makes the server side of c leave CLOSE-WAIT by the peer's
// reset while the server still holds it, as a prompt server's reply does
// when it meets a closed client: the client sends its request and closes,
// the server reads to the end, answers, and the closed client resets.
func resetByPeer(t *testing.T, c conn) {
	t.Helper()
	if _, err := c.client.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	c.client.Close()
	if _, err := io.ReadAll(c.server); err != nil {
		t.Fatal(err)
	}
	if _, err := c.server.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	raw, err := c.server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(eventTimeout); ; time.Sleep(time.Millisecond) {
		var info *unix.TCPInfo
		_ = raw.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
		if err != nil {
			t.Fatal(err)
		}
		if info.State == unix.BPF_TCP_CLOSE {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server's socket is in state %d, not CLOSE, %v after the reply", info.State, eventTimeout)
		}
	}
}

// A prompt server whose reply meets the closed client's reset (PostgreSQL
// over TLS does this on every session) closes its socket a moment later:
// that is the application's close, reported as app_close with peer_reset,
// counted as closed with its FIN-to-close latency, and no abort.
func TestPeerResetThenClose(t *testing.T) {
	testenv.RequirePrivileged(t)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	p, base := startWithMetrics(t, "--all", "--port", portArg(ln), "--threshold", "1m")
	c := dial(t, ln)
	resetByPeer(t, c)
	c.server.Close()
	ac := p.next(eventTimeout, "the server's close", func(ev jsonEvent) bool {
		return (ev.Event == "app_close" || ev.Event == "abort") && c.isServer(ev)
	})
	if ac.Event != "app_close" || !ac.PeerReset || ac.NewState != "CLOSE" || ac.FinToCloseNS == nil || *ac.FinToCloseNS <= 0 {
		t.Fatalf("%v, want an app_close with peer_reset and its FIN-to-close latency", ac)
	}
	if ac.Closer == nil || ac.Closer.PID != os.Getpid() || ac.ClosedByExit == nil || *ac.ClosedByExit {
		t.Errorf("closer %+v (by exit %v), want this process's close", ac.Closer, ac.ClosedByExit)
	}
	fams := scrape(t, base)
	in := map[string]string{"port": portArg(ln), "direction": "inbound"}
	for name, want := range map[string]float64{"tcptrace_close_wait_closed_total": 1, "tcptrace_close_wait_aborted_total": 0, "tcptrace_close_wait_sockets": 0} {
		if got := series(fams, name, in); len(got) != 1 || value(got[0]) != want {
			t.Errorf("%s%v: %v, want %v", name, in, got, want)
		}
	}
	if h := series(fams, "tcptrace_fin_to_close_seconds", in); len(h) != 1 || h[0].GetHistogram().GetSampleCount() != 1 {
		t.Errorf("fin_to_close_seconds%v: %v, want one close", in, h)
	}
}

// A server that never closes its socket after the peer's reset still
// holds the descriptor: it stays reported stuck, with its holder, and
// counted in CLOSE-WAIT, until it closes.
func TestPeerResetStillHeld(t *testing.T) {
	testenv.RequirePrivileged(t)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	p, base := startWithMetrics(t, "--port", portArg(ln), "--threshold", "300ms")
	c := dial(t, ln)
	resetByPeer(t, c)
	st := p.next(eventTimeout, "the held socket's stuck report", func(ev jsonEvent) bool {
		return ev.Event == "stuck" && c.isServer(ev)
	})
	checkOwners(t, st, os.Getpid())
	in := map[string]string{"port": portArg(ln), "direction": "inbound"}
	if got := series(scrape(t, base), "tcptrace_close_wait_sockets", in); len(got) != 1 || value(got[0]) != 1 {
		t.Errorf("tcptrace_close_wait_sockets%v: %v, want 1 while the socket is held", in, got)
	}
	c.server.Close()
	ac := p.next(eventTimeout, "the close", func(ev jsonEvent) bool {
		return (ev.Event == "app_close" || ev.Event == "abort") && c.isServer(ev)
	})
	if ac.Event != "app_close" || !ac.PeerReset || ac.WasStuck == nil || !*ac.WasStuck {
		t.Errorf("%v, want an app_close with peer_reset of a socket reported stuck", ac)
	}
}
