package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/report"
)

// leakServer starts a helper that accepts and holds every connection
// (env: its settings), and returns it with its port.
func leakServer(t *testing.T, env ...string) (*helper, int) {
	t.Helper()
	testenv.RequirePrivileged(t)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	h := startHelper(t, "leak-many", 0)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		os.Unsetenv(k)
	}
	port, err := strconv.Atoi(h.line(t))
	if err != nil {
		t.Fatal(err)
	}
	return h, port
}

// leakAt connects to port every `every` until stop is closed; each client
// shuts down its side and keeps its socket, so the server's socket enters
// CLOSE-WAIT (and a closed client cannot be reset as an orphan).
func leakAt(t *testing.T, port int, every time.Duration, stop chan struct{}, wg *sync.WaitGroup) *[]net.Conn {
	t.Helper()
	conns := &[]net.Conn{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Error(err)
				return
			}
			c.(*net.TCPConn).CloseWrite()
			*conns = append(*conns, c)
		}
	}()
	t.Cleanup(func() {
		for _, c := range *conns {
			c.Close()
		}
	})
	return conns
}

// topOnce runs tcptrace top --once --output json and decodes its report.
func topOnce(t *testing.T, args ...string) report.Report {
	t.Helper()
	cmd := tcptraceCmd(nil, append([]string{"top", "--once", "--output", "json"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("top --once %v: %v\n%s", args, err, stderr.String())
	}
	var r report.Report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("top --once: %v\n%s", err, stdout.String())
	}
	return r
}

func rowOf(r report.Report, port int) *report.Row {
	for i := range r.Rows {
		if int(r.Rows[i].Port) == port {
			return &r.Rows[i]
		}
	}
	return nil
}

func within(got, want, tolerance float64) bool {
	return math.Abs(got-want) <= tolerance*want
}

// Two servers leak at different rates: the faster ranks first, the rates
// are within 20 % of the truth, the holder's descriptors and RLIMIT_NOFILE
// give the forecast; a third server closes each socket 200 ms after the
// peer's FIN: its percentiles are that delay's bucket.
func TestTopRanksLeaksAndForecasts(t *testing.T) {
	fast, fastPort := leakServer(t, "TCPTRACE_TEST_NOFILE=4096")
	_, slowPort := leakServer(t)
	_, closerPort := leakServer(t, "TCPTRACE_TEST_CLOSE_AFTER=200ms")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const fastEvery, slowEvery = 100 * time.Millisecond, 400 * time.Millisecond
	leakAt(t, fastPort, fastEvery, stop, &wg)
	leakAt(t, slowPort, slowEvery, stop, &wg)
	leakAt(t, closerPort, 100*time.Millisecond, stop, &wg)
	r := topOnce(t, "--duration", "8s", "--threshold", "500ms",
		"--port", strconv.Itoa(fastPort), "--port", strconv.Itoa(slowPort), "--port", strconv.Itoa(closerPort))
	close(stop)
	wg.Wait()

	if len(r.Rows) < 3 || int(r.Rows[0].Port) != fastPort {
		t.Fatalf("rows %+v, want the fast leak (port %d) first", r.Rows, fastPort)
	}
	f, s := rowOf(r, fastPort), rowOf(r, slowPort)
	if s == nil || r.Rows[1].Port != uint16(slowPort) {
		t.Errorf("the slow leak (port %d) is not second: %+v", slowPort, r.Rows)
	}
	wantFast, wantSlow := float64(time.Minute/fastEvery), float64(time.Minute/slowEvery)
	for _, c := range []struct {
		name      string
		row       *report.Row
		want      float64
		new, grow float64
	}{{"fast", f, wantFast, f.NewPerMinute, f.GrowthPerMinute}, {"slow", s, wantSlow, s.NewPerMinute, s.GrowthPerMinute}} {
		if !within(c.new, c.want, 0.2) || !within(c.grow, c.want, 0.2) {
			t.Errorf("%s leak: new %.0f/min, growth %.0f/min, want %.0f/min ±20 %%", c.name, c.new, c.grow, c.want)
		}
		if c.row.Direction != "inbound" || c.row.InCloseWait == 0 || c.row.Stuck == 0 {
			t.Errorf("%s leak: %+v, want inbound with sockets in CLOSE-WAIT and stuck", c.name, c.row)
		}
	}
	// The forecast: the fast holder's free descriptors at its growth rate.
	if len(f.Holders) == 0 || f.Holders[0].PID != fast.cmd.Process.Pid || f.Holders[0].FDLimit != 4096 || f.Holders[0].OpenFDs == 0 {
		t.Fatalf("fast leak's holders %+v, want pid %d with its limit 4096", f.Holders, fast.cmd.Process.Pid)
	}
	h := f.Holders[0]
	want := time.Duration(float64(h.FDLimit-h.OpenFDs) / f.GrowthPerMinute * float64(time.Minute))
	if f.ExhaustionNever || !within(float64(f.Exhaustion), float64(want), 0.05) {
		t.Errorf("forecast %v (never %v), want %v: (%d-%d) descriptors at %.0f/min", f.Exhaustion, f.ExhaustionNever, want, h.FDLimit, h.OpenFDs, f.GrowthPerMinute)
	}
	c := rowOf(r, closerPort)
	bucket := events.HistUpperBound(events.HistBucket(200 * time.Millisecond))
	if c == nil || c.Closes == 0 || c.P50 != bucket || c.P99 < bucket || c.P99 > 2*bucket {
		t.Errorf("closer: %+v, want p50 %v (200 ms's bucket) and p99 within a bucket of it", c, bucket)
	}
	if c != nil && (c.GrowthPerMinute > wantFast*0.2 || !c.ExhaustionNever) {
		t.Errorf("closer: growth %.0f/min, never %v, want little growth and no exhaustion", c.GrowthPerMinute, c.ExhaustionNever)
	}
}

// A local client whose server never closes waits in FIN_WAIT2: the peers
// section names that server's address and port.
func TestTopPeersInFinWait2(t *testing.T) {
	_, port := leakServer(t)
	for range 3 {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite() // FIN_WAIT2 until the server closes
		defer c.Close()
	}
	r := topOnce(t, "--duration", "1s", "--port", strconv.Itoa(port))
	want := fmt.Sprintf("127.0.0.1:%d", port)
	for _, p := range r.Peers {
		if p.Addr == want {
			if p.FinWait2 != 3 {
				t.Errorf("peer %+v, want 3 sockets in FIN_WAIT2", p)
			}
			return
		}
	}
	t.Errorf("peers %+v, want %s with our 3 sockets in FIN_WAIT2", r.Peers, want)
}

// top --from a running closewait --listen shows the same rows as top.
func TestTopFromRunningCloseWait(t *testing.T) {
	_, port := leakServer(t)
	p, base := startWithMetrics(t, "--port", strconv.Itoa(port), "--threshold", "500ms")
	_ = p
	stop := make(chan struct{})
	var wg sync.WaitGroup
	leakAt(t, port, 200*time.Millisecond, stop, &wg)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	time.Sleep(1500 * time.Millisecond) // every socket stuck
	local := topOnce(t, "--duration", "1500ms", "--threshold", "500ms", "--port", strconv.Itoa(port))
	remote := topOnce(t, "--from", base)
	l, r := rowOf(local, port), rowOf(remote, port)
	if l == nil || r == nil {
		t.Fatalf("rows: local %+v, remote %+v", local.Rows, remote.Rows)
	}
	if l.Workload != r.Workload || l.Direction != r.Direction || l.InCloseWait != r.InCloseWait || l.Stuck != r.Stuck ||
		l.InCloseWait == 0 || len(r.Holders) == 0 || l.Holders[0].PID != r.Holders[0].PID {
		t.Errorf("top --from differs from top:\nlocal  %+v\nremote %+v", l, r)
	}
}

// The live view, in a real pseudo-terminal with a leak in progress: the
// rows show, q ends it with status 0 and the terminal restored.
func TestTopLiveView(t *testing.T) {
	_, port := leakServer(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	leakAt(t, port, 100*time.Millisecond, stop, &wg)
	defer func() { close(stop); wg.Wait() }()
	cmd := tcptraceCmd(nil, "top", "--threshold", "500ms", "--refresh", "300ms", "--port", strconv.Itoa(port))
	var stderr syncBuffer
	cmd.Stderr = &stderr
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 160})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var screen syncBuffer
	go io.Copy(&screen, tty)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(screen.String(), strconv.Itoa(port)) {
		if time.Now().After(deadline) {
			t.Fatalf("no row for port %d on the screen:\n%q\n%s", port, screen.String(), stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // a few refreshes
	if _, err := tty.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("q: %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("q did not end the live view")
	}
	if out := screen.String(); !strings.Contains(out, "\x1b[?1049l") {
		t.Errorf("the alternate screen was not left: %q", out[max(0, len(out)-200):])
	}
}

// closewait --summary-interval writes the report's rows as summary events
// (validated against the schema as every line is).
func TestSummaryEvents(t *testing.T) {
	_, port := leakServer(t)
	p := startTracer(t, "closewait", "--port", strconv.Itoa(port), "--threshold", "500ms", "--summary-interval", "1s")
	for range 4 {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		defer c.Close()
	}
	ev := p.next(5*time.Second, "a summary with the 4 leaked sockets", func(ev jsonEvent) bool {
		return ev.Event == "summary" && ev.Port == port && ev.InCloseWait != nil && *ev.InCloseWait == 4
	})
	t0, _ := time.Parse(time.RFC3339Nano, ev.Time)
	next := p.next(3*time.Second, "the next summary", func(ev jsonEvent) bool { return ev.Event == "summary" && ev.Port == port })
	t1, _ := time.Parse(time.RFC3339Nano, next.Time)
	if d := t1.Sub(t0); d < 500*time.Millisecond || d > 2*time.Second {
		t.Errorf("summaries %v apart, want about 1s", d)
	}
}
