package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/internal/testenv"
)

// holdingServer accepts on a loopback port and keeps every connection,
// for the test to close or write to.
func holdingServer(t *testing.T) (int, func(n int) []net.Conn) {
	t.Helper()
	ln := listen(t, "tcp4", "127.0.0.1:0")
	var mu sync.Mutex
	var conns []net.Conn
	arrived := make(chan struct{}, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			t.Cleanup(func() { c.Close() })
			arrived <- struct{}{}
		}
	}()
	wait := func(n int) []net.Conn {
		for range n {
			select {
			case <-arrived:
			case <-time.After(eventTimeout):
				t.Fatalf("the holding server did not accept %d connections", n)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		return append([]net.Conn(nil), conns...)
	}
	return ln.Addr().(*net.TCPAddr).Port, wait
}

// Self-healing: closewait --destroy-after with --destroy-port A destroys
// the 5 sockets leaked on port A (one at a time at --destroy-rate 2), each
// a destroyed event with the policy as reason and counted in
// tcptrace_destroyed_total; the 3 leaked on port B stay; a socket on A that
// its application closes within the window is left alone. The application
// sees an error on its next write.
func TestDestroyAfterHeals(t *testing.T) {
	testenv.RequirePrivileged(t)
	portA, accepted := holdingServer(t)
	_, portB := leakServer(t)
	p, base := startWithMetrics(t, "--threshold", "200ms", "--destroy-after", "3s", "--destroy-port", strconv.Itoa(portA), "--destroy-rate", "2")
	dial := func(port, n int) []net.Conn {
		var cs []net.Conn
		for range n {
			c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			c.(*net.TCPConn).CloseWrite()
			cs = append(cs, c)
		}
		return cs
	}
	dial(portB, 3)
	clients := dial(portA, 6)
	server := accepted(6)
	faultWait(t, "6 sockets in CLOSE-WAIT on port A", func() bool { cw, _ := closeWaitOnPort(t, portA); return cw == 6 })
	// Closed by its application well within the 3 s window.
	closedPort := clients[0].LocalAddr().(*net.TCPAddr).Port
	for _, c := range server {
		if c.RemoteAddr().(*net.TCPAddr).Port == closedPort {
			c.Close()
		}
	}

	var times []time.Time
	for len(times) < 5 {
		ev := p.next(eventTimeout, "a destroyed event", func(ev jsonEvent) bool { return ev.Event == "destroyed" || ev.Event == "not_destroyed" })
		if ev.Event != "destroyed" || ev.LocalPort != portA || ev.Reason != "destroy_after" || ev.RemotePort == closedPort ||
			ev.AgeNS == nil || time.Duration(*ev.AgeNS) < 3*time.Second {
			t.Fatalf("%+v: want a destroyed socket of port %d (not the one closed, %d), older than 3s, reason destroy_after", ev, portA, closedPort)
		}
		tm, err := time.Parse(time.RFC3339Nano, ev.Time)
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, tm)
	}
	// At 2 a second, one at a time: 5 take at least 2 s from the first to
	// the last (the limiter makes it so; a slow machine only spreads them).
	if span := times[4].Sub(times[0]); span < 1900*time.Millisecond {
		t.Errorf("5 destroyed within %v, want at least 2s at --destroy-rate 2", span)
	}
	faultWait(t, "no socket left in CLOSE-WAIT on port A", func() bool { cw, _ := closeWaitOnPort(t, portA); return cw == 0 })
	if cw, _ := closeWaitOnPort(t, portB); cw != 3 {
		t.Errorf("port B: %d sockets in CLOSE-WAIT, want its 3 untouched", cw)
	}
	// What the application sees on its next write, and read.
	var victim net.Conn
	for _, c := range server {
		if c.RemoteAddr().(*net.TCPAddr).Port != closedPort {
			victim = c
			break
		}
	}
	_, werr := victim.Write([]byte("late reply"))
	t.Logf("a write on a destroyed socket: %v", werr)
	if !errors.Is(werr, syscall.ECONNABORTED) {
		t.Errorf("a write on a destroyed socket: %v, want ECONNABORTED (as the docs say)", werr)
	}
	if n, err := victim.Read(make([]byte, 16)); n != 0 || err != io.EOF {
		t.Errorf("a read after that: %d bytes, %v; want end of file (as the docs say)", n, err)
	}
	want := map[string]string{"port": strconv.Itoa(portA), "direction": "inbound"}
	faultWait(t, "tcptrace_destroyed_total of 5", func() bool {
		s := series(scrape(t, base), "tcptrace_destroyed_total", want)
		return len(s) == 1 && value(s[0]) == 5
	})
	for _, ev := range p.drain() {
		if (ev.Event == "destroyed" || ev.Event == "not_destroyed") && ev.LocalPort != portA {
			t.Errorf("a socket of another port acted on: %+v", ev)
		}
	}
}

// --destroy-dry-run destroys nothing and says once per socket what it
// would destroy.
func TestDestroyAfterDryRun(t *testing.T) {
	testenv.RequirePrivileged(t)
	_, port := leakServer(t)
	p := startTracer(t, "closewait", "--threshold", "200ms", "--destroy-after", "500ms", "--destroy-port", strconv.Itoa(port), "--destroy-dry-run")
	for range 2 {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.(*net.TCPConn).CloseWrite()
	}
	seen := map[int]int{}
	for len(seen) < 2 {
		ev := p.next(eventTimeout, "a dry-run not_destroyed", func(ev jsonEvent) bool { return ev.Event == "not_destroyed" || ev.Event == "destroyed" })
		if ev.Event != "not_destroyed" || ev.Reason != "dry_run" {
			t.Fatalf("%+v: want not_destroyed, dry_run", ev)
		}
		seen[ev.RemotePort]++
	}
	if cw, _ := closeWaitOnPort(t, port); cw != 2 {
		t.Errorf("%d sockets in CLOSE-WAIT after a dry run, want 2", cw)
	}
	clear(seen)
	for _, ev := range p.drain() { // every event, those seen above too
		if ev.Event == "not_destroyed" || ev.Event == "destroyed" {
			seen[ev.RemotePort]++
		}
	}
	for port, n := range seen {
		if n != 1 {
			t.Errorf("client port %d reported %d times, want once", port, n)
		}
	}
}
