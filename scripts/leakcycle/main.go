//go:build linux

// Command leakcycle keeps a leak going for a timed soak (make soak with
// SOAK_DURATION): it holds -n server sockets in CLOSE-WAIT and, every
// second, ends the -rate oldest and leaks as many new ones. An ended leak
// is closed by the application, unless tcptrace kill destroyed it first
// (the soak runs kill meanwhile). It writes one line per leak and per end
// to -log, for scripts/soakcheck, and stops on SIGINT or SIGTERM, leaving
// the sockets it holds to its exit.
//
//	leak UNIXNANO CLIENT_ADDR:PORT
//	end UNIXNANO CLIENT_ADDR:PORT closed|destroyed
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h).
const ipBindAddressNoPort = 24

type leak struct {
	server, client net.Conn
	name           string
}

func main() {
	n := flag.Int("n", 1000, "leaked sockets held at once")
	rate := flag.Int("rate", 15, "leaks ended and made each second")
	logPath := flag.String("log", "", "where to write the leak log (required)")
	flag.Parse()
	if *n < 1 || *rate < 1 || *rate > *n || *logPath == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "leakcycle: -n and -rate must be positive, -rate at most -n, -log given, and no arguments")
		os.Exit(2)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	f, err := os.Create(*logPath)
	if err != nil {
		fail(err)
	}
	log := bufio.NewWriter(f)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	fmt.Println("port", ln.Addr().(*net.TCPAddr).Port)
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
	made := 0
	open := func() leak {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 2+byte(made/250%200), byte(2+made%250))}
		made++
		c, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			fail(err)
		}
		// Shut down, not closed: an orphan in FIN_WAIT2 could be reset,
		// which would abort its server's CLOSE-WAIT.
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			fail(err)
		}
		s := <-accepted
		name := s.RemoteAddr().String()
		fmt.Fprintf(log, "leak %d %s\n", time.Now().UnixNano(), name)
		return leak{server: s, client: c, name: name}
	}
	held := make([]leak, 0, *n)
	for range *n {
		held = append(held, open())
	}
	log.Flush()
	fmt.Println("ready", len(held))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			log.Flush()
			f.Close()
			fmt.Println("stopped", made)
			return
		case <-tick.C:
		}
		for _, l := range held[:*rate] {
			how := "closed"
			if destroyed(l.server) {
				how = "destroyed"
			}
			l.server.Close()
			l.client.Close()
			fmt.Fprintf(log, "end %d %s %s\n", time.Now().UnixNano(), l.name, how)
		}
		held = append(held[:0], held[*rate:]...)
		for range *rate {
			held = append(held, open())
		}
		log.Flush()
	}
}

// destroyed says whether the socket was destroyed (tcptrace kill): its
// pending error is ECONNABORTED. A read cannot tell: it returns end of
// file before the error once the peer's FIN is in.
func destroyed(c net.Conn) bool {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return false
	}
	var soErr int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		soErr, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR)
	}); err != nil || gerr != nil {
		return false
	}
	return syscall.Errno(soErr) == syscall.ECONNABORTED
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "leakcycle:", err)
	os.Exit(1)
}
