//go:build linux

// Command leaker holds many server sockets in CLOSE-WAIT, for measuring
// tcptrace under a large leak (scripts/bigleak.sh runs several, as one
// process may hold only RLIMIT_NOFILE's hard limit). It listens on loopback,
// connects -n clients from rotating source addresses, accepts each, closes
// the client's sending side and never closes the server side. It prints "ready N" once N
// sockets are in CLOSE-WAIT, then holds them until killed.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h).
const ipBindAddressNoPort = 24

func main() {
	n := flag.Int("n", 100000, "sockets to leak")
	flag.Parse()
	// Each leaked socket is a descriptor; the closed clients are not.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Cur, err))
	}
	if need := 2*uint64(*n) + 64; need > lim.Cur {
		fail(fmt.Errorf("%d sockets need %d descriptors, the limit is %d: run more leakers", *n, need, lim.Cur))
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	fmt.Println("port", ln.Addr().(*net.TCPAddr).Port)
	held := make([]net.Conn, 0, *n)
	accepted := make(chan net.Conn, 1024)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				fail(err)
			}
			accepted <- c
		}
	}()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
		})
		return errors.Join(err, serr)
	}}
	for i := 0; i < *n; i++ {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 1+byte(i/60000), byte(2+i%250))}
		c, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			fail(fmt.Errorf("connection %d: %w", i, err))
		}
		// Shut down, not close: a closed client would be an orphan in
		// FIN_WAIT2, and past tcp_max_orphans the kernel resets orphans,
		// which aborts their servers' CLOSE-WAIT.
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			fail(err)
		}
		held = append(held, <-accepted, c)
	}
	time.Sleep(200 * time.Millisecond) // the last FINs
	fmt.Println("ready", len(held)/2)
	for {
		time.Sleep(time.Hour)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "leaker:", err)
	os.Exit(1)
}
