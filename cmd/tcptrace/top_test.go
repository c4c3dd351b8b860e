package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"regexp"
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

// topUntil runs top --once for --duration 1.5s, and again for twice as
// long while ok does not hold of its report: what top sees in a fixed
// time (sockets found stuck, their holders resolved) depends on how fast
// the machine is, and under qemu TCG a second is not enough.
func topUntil(t *testing.T, what string, ok func(report.Report) bool, args ...string) report.Report {
	t.Helper()
	for d := 1500 * time.Millisecond; ; d *= 2 {
		r := topOnce(t, append([]string{"--duration", d.String()}, args...)...)
		if ok(r) {
			return r
		}
		if d > eventTimeout {
			t.Fatalf("top --once did not see %s in %v: %+v", what, d, r.Rows)
		}
		t.Logf("top --once --duration %v: not %s yet: again for longer", d, what)
	}
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

// Two servers leak at different rates: the faster ranks first; each
// rate is what the kernel counted between the report's samples (read back
// from the row's history, so the check holds however unevenly a loaded
// machine runs the leaks); the holder's descriptors and RLIMIT_NOFILE give
// the forecast. A third server closes each socket 200 ms after the peer's
// FIN: its latencies lie between that and bounds measured here.
func TestTopRanksLeaksAndForecasts(t *testing.T) {
	fast, fastPort := leakServer(t, "TCPTRACE_TEST_NOFILE=4096")
	_, slowPort := leakServer(t)
	closer, closerPort := leakServer(t, "TCPTRACE_TEST_CLOSE_AFTER=200ms")
	closes := readCloses(closer)

	// One goroutine makes all the leaks, four fast ones to one slow one,
	// so that the fast leak outpaces the slow one in any stretch of time.
	// A socket of each exists before top starts: both rows are in its
	// first sample, and their rates span the same samples.
	var mu sync.Mutex
	var held []net.Conn
	finAt := map[int]time.Time{} // closer's client port -> before its FIN
	leak := func(port int) {
		before := time.Now()
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Error(err)
			return
		}
		c.(*net.TCPConn).CloseWrite()
		mu.Lock()
		defer mu.Unlock()
		held = append(held, c)
		if port == closerPort {
			finAt[c.LocalAddr().(*net.TCPAddr).Port] = before
		}
	}
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	leak(fastPort)
	leak(slowPort)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			leak(fastPort)
			leak(closerPort)
			if i%4 == 0 {
				leak(slowPort)
			}
		}
	}()
	started := time.Now()
	r := topOnce(t, "--duration", "8s", "--threshold", "500ms",
		"--port", strconv.Itoa(fastPort), "--port", strconv.Itoa(slowPort), "--port", strconv.Itoa(closerPort))
	close(stop)
	<-done

	f, s, c := rowOf(r, fastPort), rowOf(r, slowPort), rowOf(r, closerPort)
	if f == nil || s == nil || c == nil {
		t.Fatalf("rows %+v, want one for each of ports %d, %d and %d", r.Rows, fastPort, slowPort, closerPort)
	}
	// Neither leak closes a socket: what entered between the first and
	// the last sample is the growth of CLOSE-WAIT over the history.
	grew := func(row *report.Row) float64 {
		if len(row.History) < 2 {
			t.Fatalf("port %d: history %v, want the samples of 8s", row.Port, row.History)
		}
		return float64(row.History[len(row.History)-1]) - float64(row.History[0])
	}
	df, ds := grew(f), grew(s)
	if len(f.History) != len(s.History) || df <= 0 || ds <= 0 {
		t.Fatalf("histories fast %v, slow %v: want the same samples, each growing", f.History, s.History)
	}
	rank := func(port int) int {
		for i, row := range r.Rows {
			if int(row.Port) == port {
				return i
			}
		}
		return -1
	}
	if df > ds && (rank(fastPort) != 0 || rank(slowPort) < rank(fastPort)) {
		t.Errorf("rows %+v, want the fast leak (port %d, %v more) first, before the slow one (port %d, %v more)",
			r.Rows, fastPort, df, slowPort, ds)
	}
	// The rates are those counts over the samples' span, the same for
	// both rows; a span no longer than top ran.
	span := time.Duration(df / f.NewPerMinute * float64(time.Minute))
	for _, x := range []struct {
		name  string
		row   *report.Row
		count float64
	}{{"fast", f, df}, {"slow", s, ds}} {
		want := x.count / span.Minutes()
		if !within(x.row.NewPerMinute, want, 1e-6) || !within(x.row.GrowthPerMinute, want, 1e-6) {
			t.Errorf("%s leak: new %.2f/min, growth %.2f/min, want %.2f/min: %v more over the %v the fast leak's rate implies",
				x.name, x.row.NewPerMinute, x.row.GrowthPerMinute, want, x.count, span)
		}
		if x.row.Direction != "inbound" || x.row.InCloseWait == 0 || x.row.Stuck == 0 {
			t.Errorf("%s leak: %+v, want inbound with sockets in CLOSE-WAIT and stuck", x.name, x.row)
		}
	}
	if took := time.Since(started); span <= 0 || span > took {
		t.Errorf("the rates span %v, want within the %v top ran", span, took)
	}
	// The forecast: the fast holder's free descriptors at its growth rate.
	if len(f.Holders) == 0 || f.Holders[0].PID != fast.cmd.Process.Pid || f.Holders[0].FDLimit != 4096 {
		t.Fatalf("fast leak's holders %+v, want pid %d with its limit 4096", f.Holders, fast.cmd.Process.Pid)
	}
	h := f.Holders[0]
	want := time.Duration(float64(h.FDLimit-h.OpenFDs) / f.GrowthPerMinute * float64(time.Minute))
	if f.ExhaustionNever || !within(float64(f.Exhaustion), float64(want), 0.05) {
		t.Errorf("forecast %v (never %v), want %v: (%d-%d) descriptors at %.0f/min", f.Exhaustion, f.ExhaustionNever, want, h.FDLimit, h.OpenFDs, f.GrowthPerMinute)
	}
	// The closer's latencies: at least 200 ms (it sleeps that long after
	// reading the FIN); at most from before a client's FIN to after its
	// server closed, as the helper says, for every socket that closed.
	mu.Lock()
	made := len(finAt)
	mu.Unlock()
	var longest time.Duration
	timeout := time.After(eventTimeout)
	for range made {
		select {
		case cl := <-closes:
			mu.Lock()
			longest = max(longest, cl.at.Sub(finAt[cl.port]))
			mu.Unlock()
		case <-timeout:
			t.Fatalf("the closing server did not close its %d sockets within %v", made, eventTimeout)
		}
	}
	low, high := events.HistBucket(200*time.Millisecond), events.HistBucket(longest)
	for i, n := range c.Hist {
		if n > 0 && (i < low || i > high) {
			t.Errorf("closer: %d closes in bucket %d, want all in buckets %d (200ms) to %d (%v, the longest bound measured): %v",
				n, i, low, high, longest, c.Hist)
		}
	}
	if c.Closes == 0 || int(c.Closes) > made || c.P50 < events.HistUpperBound(low) || c.Max > events.HistUpperBound(high) || c.P50 > c.Max {
		t.Errorf("closer: %+v, want 1 to %d closes, p50 and max within the buckets of 200ms and %v", c, made, longest)
	}
}

// closed is one close the leak-many helper reported.
type closed struct {
	port int // the client's
	at   time.Time
}

// readCloses reads the "closed" lines of a leak-many helper with
// TCPTRACE_TEST_CLOSE_AFTER.
func readCloses(h *helper) <-chan closed {
	ch := make(chan closed, 100000)
	go func() {
		for h.lines.Scan() {
			var c closed
			var ns int64
			if _, err := fmt.Sscanf(h.lines.Text(), "closed %d %d", &c.port, &ns); err == nil {
				c.at = time.Unix(0, ns)
				ch <- c
			}
		}
	}()
	return ch
}

// A local client whose server never closes waits in FIN_WAIT2: the peers
// section names that server's address and port. --port selects the peers
// as it selects the rows: those waiting on another port are not shown.
func TestTopPeersInFinWait2(t *testing.T) {
	_, port := leakServer(t)
	_, other := leakServer(t)
	for i := range 4 {
		to := port
		if i == 3 {
			to = other
		}
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", to))
		if err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite() // FIN_WAIT2 until the server closes
		defer c.Close()
	}
	r := topOnce(t, "--duration", "1s", "--port", strconv.Itoa(port))
	want := fmt.Sprintf("127.0.0.1:%d", port)
	if len(r.Peers) != 1 || r.Peers[0].Addr != want || r.Peers[0].FinWait2 != 3 || r.PeersOmitted != 0 {
		t.Errorf("peers %+v (%d omitted), want %s alone, with our 3 sockets in FIN_WAIT2", r.Peers, r.PeersOmitted, want)
	}
}

// top --from a running closewait --listen shows the same rows as top.
// Each is compared once every leaked socket is stuck in it: the running
// tcptrace is polled for that; top --once traces for --duration only, and
// a machine too slow to see them all stuck in it is given twice as long.
func TestTopFromRunningCloseWait(t *testing.T) {
	_, port := leakServer(t)
	_, base := startWithMetrics(t, "--port", strconv.Itoa(port), "--threshold", "500ms")
	const n = 5
	burst := time.Now()
	for range n {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite() // the server's socket enters CLOSE-WAIT and stays
		defer c.Close()
	}
	allStuck := func(r report.Report) bool { row := rowOf(r, port); return row != nil && row.Stuck == n }
	for deadline := time.Now().Add(eventTimeout); !allStuck(topOnce(t, "--from", base)); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the running tcptrace did not report the %d sockets stuck within %v", n, eventTimeout)
		}
	}
	local := topUntil(t, "every socket stuck", allStuck, "--threshold", "500ms", "--port", strconv.Itoa(port))
	remote := topOnce(t, "--from", base)
	l, r := rowOf(local, port), rowOf(remote, port)
	if l == nil || r == nil {
		t.Fatalf("rows: local %+v, remote %+v", local.Rows, remote.Rows)
	}
	if l.Workload != r.Workload || l.Direction != r.Direction || l.InCloseWait != r.InCloseWait || l.Stuck != r.Stuck ||
		l.InCloseWait != n || len(r.Holders) == 0 || len(l.Holders) == 0 || l.Holders[0].PID != r.Holders[0].PID {
		t.Errorf("top --from differs from top:\nlocal  %+v\nremote %+v", l, r)
	}
	// The port was new to the running tcptrace: the burst that made its
	// row is in the row's rates (within the minute they cover), and the
	// forecast follows from them.
	if time.Since(burst) < report.DefaultWindow-5*time.Second &&
		(r.NewPerMinute <= 0 || r.GrowthPerMinute <= 0 || r.ExhaustionNever) {
		t.Errorf("top --from: new %.2f/min, growth %.2f/min, exhaustion never %v; want the %d new sockets' rates and a forecast",
			r.NewPerMinute, r.GrowthPerMinute, r.ExhaustionNever, n)
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
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		io.Copy(&screen, tty) // ends with EIO once top has exited
	}()
	// The row, then refreshes: its sockets turn stuck past the threshold.
	stuck := regexp.MustCompile(`[1-9][0-9]* stuck`)
	deadline := time.Now().Add(eventTimeout)
	for !strings.Contains(screen.String(), strconv.Itoa(port)) || !stuck.MatchString(screen.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no row for port %d with stuck sockets on the screen:\n%q\n%s", port, screen.String(), stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
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
	case <-time.After(eventTimeout):
		cmd.Process.Kill()
		t.Fatal("q did not end the live view")
	}
	select {
	case <-copied:
	case <-time.After(eventTimeout):
		t.Fatal("the terminal's output did not end")
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
	first := p.next(eventTimeout, "a summary with the 4 leaked sockets", func(ev jsonEvent) bool {
		return ev.Event == "summary" && ev.Port == port && ev.InCloseWait != nil && *ev.InCloseWait == 4
	})
	// They repeat, and not more often than the interval. The loop makes
	// one at a tick when at least half an interval has passed since the
	// last (it ticks more often, and takes a tick half early rather than
	// late), and each summary is made before the next tick is handled: so
	// any summary is made over half an interval after the one two before
	// it, however slow the machine.
	times := []time.Time{eventTime(t, first)}
	for len(times) < 4 {
		ev := p.next(eventTimeout, "the next summary", func(ev jsonEvent) bool { return ev.Event == "summary" && ev.Port == port })
		times = append(times, eventTime(t, ev))
	}
	for i := 2; i < len(times); i++ {
		if d := times[i].Sub(times[i-2]); d <= 500*time.Millisecond {
			t.Errorf("summaries at %v: two intervals in %v with --summary-interval 1s", times, d)
		}
	}
}

// eventTime is an event's time.
func eventTime(t *testing.T, ev jsonEvent) time.Time {
	t.Helper()
	at, err := time.Parse(time.RFC3339Nano, ev.Time)
	if err != nil {
		t.Fatalf("event time %q: %v", ev.Time, err)
	}
	return at
}
