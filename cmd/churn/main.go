//go:build linux

// Command churn opens and closes many loopback TCP connections against its
// own in-process server, for tcptrace benchmarks and soak runs. It prints how
// many tcptrace events the run should produce, so a harness can compare.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// transitionsPerConn is what tcptrace trace sees per loopback connection:
	// five state changes on each end.
	transitionsPerConn = 10
	// transitionsListener is the listener's CLOSE→LISTEN and LISTEN→CLOSE.
	transitionsListener = 2
	// closeWaitPerConn is one close_wait and one app_close: exactly one end
	// of each connection passes through CLOSE-WAIT.
	closeWaitPerConn = 2

	// rotateAbove is the connection count above which clients dial from
	// rotating source addresses. TIME_WAIT sockets of earlier connections
	// hold 4-tuples for 60 s; one source address has about 28k ephemeral
	// ports, so long runs from 127.0.0.1 alone collide or run out.
	rotateAbove = 20000
	// maxHandlers bounds server goroutines (and CLOSE-WAIT sockets held with
	// -server-delay); past it the accept loop waits, so memory stays bounded
	// however large -n is.
	maxHandlers = 16384
	// ioTimeout keeps a lost FIN from hanging a worker for ever.
	ioTimeout = 30 * time.Second
	// maxErrorSamples bounds the distinct error messages kept for the report.
	maxErrorSamples = 5
	// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h), missing
	// from package syscall.
	ipBindAddressNoPort = 24
)

type result struct {
	Connections             int64    `json:"connections"`
	Completed               int64    `json:"completed"`
	Errors                  int64    `json:"errors"`
	ElapsedSeconds          float64  `json:"elapsed_seconds"`
	ConnPerSecond           float64  `json:"conn_per_second"`
	Port                    int      `json:"port"`
	ClientClosesFirst       bool     `json:"client_closes_first"`
	SourceAddresses         int      `json:"source_addresses"`
	TransitionsExpected     int64    `json:"transitions_expected"`
	CloseWaitEventsExpected int64    `json:"closewait_events_expected"`
	ErrorSamples            []string `json:"error_samples,omitempty"`
}

// errorLog counts errors and keeps a few distinct messages.
type errorLog struct {
	n       atomic.Int64
	mu      sync.Mutex
	samples []string
}

func (e *errorLog) add(err error) {
	e.n.Add(1)
	msg := err.Error()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.samples) >= maxErrorSamples {
		return
	}
	for _, s := range e.samples {
		if s == msg {
			return
		}
	}
	e.samples = append(e.samples, msg)
}

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("churn", flag.ContinueOnError)
	n := fs.Int64("n", 30000, "total connections")
	workers := fs.Int("c", 4, "concurrent client workers")
	addr := fs.String("addr", "127.0.0.1:0", "listen address of the in-process server")
	delay := fs.Duration("server-delay", 0, "how long the server waits before closing each connection")
	clientFirst := fs.Bool("client-closes-first", false, "the client closes first, so server sockets sit in CLOSE-WAIT for -server-delay")
	asJSON := fs.Bool("json", false, "print the result as one JSON object")
	duration := fs.Duration("duration", 0, "run this long instead of for -n connections (soak runs)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 || *n < 1 || *workers < 1 || *delay < 0 || *duration < 0 {
		fmt.Fprintln(os.Stderr, "churn: -n and -c must be positive, -server-delay and -duration not negative, and no arguments")
		return 2
	}
	if *duration > 0 {
		*n = 1 << 62 // until the duration ends
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "churn:", err)
		return 2
	}
	lnAddr := ln.Addr().(*net.TCPAddr)

	var errs errorLog
	srv := &server{ln: ln, delay: *delay, clientFirst: *clientFirst, errs: &errs}
	go srv.serve()

	d := net.Dialer{Timeout: ioTimeout}
	sources := 0
	if *n > rotateAbove && lnAddr.IP.To4() != nil && lnAddr.IP.IsLoopback() {
		// Bind without a port so the kernel picks the port at connect time,
		// knowing the full 4-tuple, instead of at bind time.
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			})
			return errors.Join(err, serr)
		}
		sources = 253 // 127.0.0.2 .. 127.0.0.254
	}

	var (
		next      atomic.Int64 // connections handed out
		attempts  atomic.Int64 // dials made
		connected atomic.Int64 // dials that succeeded: the server will accept these
		completed atomic.Int64
		wg        sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dl := d // own copy: LocalAddr changes per dial
			for {
				i := next.Add(1) - 1
				if i >= *n || *duration > 0 && time.Since(start) >= *duration {
					return
				}
				if sources > 0 {
					dl.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%int64(sources)))}
				}
				attempts.Add(1)
				c, err := dl.Dial("tcp", lnAddr.String())
				if err != nil {
					errs.add(err)
					continue
				}
				connected.Add(1)
				if err := client(c.(*net.TCPConn), *clientFirst); err != nil {
					errs.add(err)
					continue
				}
				completed.Add(1)
			}
		}()
	}
	wg.Wait()

	// Closing the listener resets connections still in its accept queue, which
	// would change their transitions; wait until the server has them all.
	waitUntil := time.Now().Add(ioTimeout)
	for srv.accepted.Load() < connected.Load() && time.Now().Before(waitUntil) {
		time.Sleep(time.Millisecond)
	}
	ln.Close()
	srv.wg.Wait()
	elapsed := time.Since(start)

	done := completed.Load()
	res := result{
		Connections:             attempts.Load(),
		Completed:               done,
		Errors:                  errs.n.Load(),
		ElapsedSeconds:          elapsed.Seconds(),
		ConnPerSecond:           float64(done) / elapsed.Seconds(),
		Port:                    lnAddr.Port,
		ClientClosesFirst:       *clientFirst,
		SourceAddresses:         sources,
		TransitionsExpected:     transitionsPerConn*done + transitionsListener,
		CloseWaitEventsExpected: closeWaitPerConn * done,
		ErrorSamples:            errs.samples,
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		if err := enc.Encode(res); err != nil {
			fmt.Fprintln(os.Stderr, "churn:", err)
			return 1
		}
	} else {
		fmt.Printf("connections completed:     %d of %d\n", res.Completed, res.Connections)
		fmt.Printf("errors:                    %d\n", res.Errors)
		for _, s := range res.ErrorSamples {
			fmt.Printf("  e.g. %s\n", s)
		}
		fmt.Printf("elapsed:                   %.3f s\n", res.ElapsedSeconds)
		fmt.Printf("rate:                      %.0f conn/s\n", res.ConnPerSecond)
		fmt.Printf("listen port:               %d\n", res.Port)
		fmt.Printf("transitions expected:      %d\n", res.TransitionsExpected)
		fmt.Printf("closewait events expected: %d\n", res.CloseWaitEventsExpected)
	}
	// More than 1% failed: the expected counts are no longer trustworthy.
	if res.Errors*100 > res.Connections {
		fmt.Fprintf(os.Stderr, "churn: %d of %d connections failed\n", res.Errors, res.Connections)
		return 1
	}
	return 0
}

// client runs one connection's client side. It sends nothing, so no close
// ever finds unread data and turns into a reset.
func client(c *net.TCPConn, closeFirst bool) error {
	if closeFirst {
		return c.Close()
	}
	// The server closes first: read to its FIN, then close.
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	_, err := io.Copy(io.Discard, c)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	return err
}

type server struct {
	ln          net.Listener
	delay       time.Duration
	clientFirst bool
	errs        *errorLog

	accepted atomic.Int64
	wg       sync.WaitGroup
}

func (s *server) serve() {
	slots := make(chan struct{}, maxHandlers)
	for {
		slots <- struct{}{}
		c, err := s.ln.Accept()
		if err != nil {
			<-slots
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient (EMFILE and the like): back off rather than spin.
			s.errs.add(fmt.Errorf("accept: %w", err))
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.accepted.Add(1)
		s.wg.Add(1)
		go func() {
			defer func() { <-slots; s.wg.Done() }()
			if err := s.handle(c); err != nil {
				s.errs.add(err)
			}
		}()
	}
}

func (s *server) handle(c net.Conn) error {
	if s.clientFirst {
		// Wait for the client's FIN so that the client really closed first;
		// from here this end is in CLOSE-WAIT.
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		if _, err := io.Copy(io.Discard, c); err != nil {
			c.Close()
			return err
		}
	}
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	return c.Close()
}
