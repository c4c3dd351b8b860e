package tui

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/creack/pty"

	"github.com/tcptrace/tcptrace/report"
)

// childEnv makes the test binary a child of the pseudo-terminal tests:
// "live" runs Run on its stdin and stdout, "once" writes one WriteTable,
// "hello" prints hello (any tcptrace command that does not use the view,
// linked with it).
const childEnv = "TCPTRACE_TUI_TEST_CHILD"

// refresh is the child's refresh period.
const refresh = 200 * time.Millisecond

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "":
		os.Exit(m.Run())
	case "live":
		var n atomic.Int64
		err := Run(context.Background(), os.Stdin, os.Stdout, refresh, func(ctx context.Context) (report.Report, error) {
			return liveReport(int(n.Add(1)))
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "Run:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case "once":
		if err := WriteTable(os.Stdout, sampleReport(1), 100); err != nil {
			fmt.Fprintln(os.Stderr, "WriteTable:", err)
			os.Exit(1)
		}
		os.Exit(0)
	case "hello":
		fmt.Println("hello")
		os.Exit(0)
	}
	os.Exit(2)
}

// liveReport is the child's n-th report: sampleReport's rows with the
// last two swapping places on every refresh (the client pool's growth
// jumps above nginx's on odd ones), and every fifth fetch failing.
func liveReport(n int) (report.Report, error) {
	if n%5 == 0 {
		return report.Report{}, errors.New("connection refused")
	}
	r := sampleReport(n)
	if n%2 == 1 {
		r.Rows[2].GrowthPerMinute = 1
	}
	return r, nil
}

// term is the test's side of a pseudo-terminal: it keeps everything the
// child wrote, feeds it to a screen, and answers the queries in answers.
type term struct {
	t       *testing.T
	ptmx    *os.File
	answers []query

	mu      sync.Mutex
	raw     []byte
	scr     *screen
	scanned int
	changed chan struct{} // signalled on every write
	done    chan struct{} // closed when the child's side closed
}

func newTerm(t *testing.T, ptmx *os.File, w, h int, answers []query) *term {
	tm := &term{t: t, ptmx: ptmx, answers: answers, scr: newScreen(w, h), changed: make(chan struct{}, 1), done: make(chan struct{})}
	go tm.read()
	return tm
}

type query struct{ query, answer string }

// modern answers the queries bubbletea sends when a program starts, as a
// terminal with synchronized output (2026) but not Unicode core (2027)
// does; it does not speak the Kitty keyboard protocol.
var modern = []query{
	{"\x1b[?2026$p", "\x1b[?2026;2$y"},
	{"\x1b[?2027$p", "\x1b[?2027;0$y"},
}

// mute answers nothing, like a terminal (or a terminal emulator's test
// harness, or a serial console) that does not know the queries.
var mute []query

// probes are the queries termenv (so lipgloss and bubbletea v1) sends at
// start-up and waits up to 5s for, when stdout is a terminal: the
// background (and foreground) colour and the cursor position. The answer
// of a terminal that answers late lands in the shell's input.
var probes = []string{"\x1b]11;?", "\x1b]10;?", "\x1b[6n"}

// probed is the probes in raw.
func probed(raw []byte) []string {
	var found []string
	for _, p := range probes {
		if bytes.Contains(raw, []byte(p)) {
			found = append(found, p)
		}
	}
	return found
}

func (tm *term) read() {
	defer close(tm.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := tm.ptmx.Read(buf)
		if n > 0 {
			tm.mu.Lock()
			tm.raw = append(tm.raw, buf[:n]...)
			tm.scr.Write(buf[:n])
			var answers []string
			for {
				next, at := -1, len(tm.raw)
				for i, q := range tm.answers {
					if j := bytes.Index(tm.raw[tm.scanned:], []byte(q.query)); j >= 0 && tm.scanned+j < at {
						next, at = i, tm.scanned+j
					}
				}
				if next < 0 {
					tm.scanned = max(tm.scanned, len(tm.raw)-8)
					break
				}
				answers = append(answers, tm.answers[next].answer)
				tm.scanned = at + len(tm.answers[next].query)
			}
			tm.mu.Unlock()
			for _, a := range answers {
				tm.ptmx.WriteString(a)
			}
			select {
			case tm.changed <- struct{}{}:
			default:
			}
		}
		if err != nil { // EIO once the child's side closed
			return
		}
	}
}

// snapshot is the screen's text now.
func (tm *term) snapshot() []string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.scr.lines()
}

// waitTimeout bounds every wait on the terminal: generous, for a loaded
// machine or qemu TCG; a passing run never waits for it.
const waitTimeout = 60 * time.Second

// waitFor waits (at most waitTimeout) until cond holds on the screen, and returns
// that screen.
func (tm *term) waitFor(what string, cond func(lines []string) bool) []string {
	tm.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		lines := tm.snapshot()
		if cond(lines) {
			return lines
		}
		select {
		case <-tm.changed:
		case <-tm.done:
			if lines := tm.snapshot(); cond(lines) {
				return lines
			}
			tm.t.Fatalf("the child exited before %s; screen:\n%s", what, strings.Join(lines, "\n"))
		case <-deadline:
			tm.t.Fatalf("no %s in %v; screen:\n%s", what, waitTimeout, strings.Join(lines, "\n"))
		}
	}
}

func (tm *term) resize(w, h int) {
	tm.mu.Lock()
	tm.scr.resize(w, h)
	tm.mu.Unlock()
	if err := pty.Setsize(tm.ptmx, &pty.Winsize{Cols: uint16(w), Rows: uint16(h)}); err != nil {
		tm.t.Fatal(err)
	}
}

func (tm *term) send(s string) {
	if _, err := tm.ptmx.WriteString(s); err != nil {
		tm.t.Fatal(err)
	}
}

// startChild runs the test binary as a child in mode, on a new
// pseudo-terminal of w×h that answers answers.
func startChild(t *testing.T, mode string, w, h int, answers []query) (*exec.Cmd, *term) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// GORACE: a race-enabled child would wait 1s before it exits.
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "TERM=xterm-256color", "TZ=UTC", "LANG=C.UTF-8",
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: uint16(w), Rows: uint16(h)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		ptmx.Close()
	})
	return cmd, newTerm(t, ptmx, w, h, answers)
}

// waitExit waits (at most waitTimeout) for the child to exit, and for its output.
func waitExit(t *testing.T, cmd *exec.Cmd, tm *term) error {
	t.Helper()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(waitTimeout):
		t.Fatalf("the child did not exit in %v; screen:\n%s", waitTimeout, strings.Join(tm.snapshot(), "\n"))
	}
	select {
	case <-tm.done:
	case <-time.After(waitTimeout):
		t.Fatalf("the terminal did not close in %v after the child exited", waitTimeout)
	}
	return err
}

// selectedLine is the table line of the selected row (▶), or "".
func selectedLine(lines []string) string {
	for _, l := range lines {
		if strings.HasPrefix(l, "▶ ") {
			return l
		}
	}
	return ""
}

func lineIndex(lines []string, prefix string) int {
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return i
		}
	}
	return -1
}

func contains(lines []string, s string) bool {
	return strings.Contains(strings.Join(lines, "\n"), s)
}

var sparkRE = regexp.MustCompile(`(?m)^CLOSE-WAIT history [▁▂▃▄▅▆▇█]+  now \d+`)

var headerTime = regexp.MustCompile(`^tcptrace top (\d\d:\d\d:\d\d) `)

// TestLiveTerminal runs the live view in a real pseudo-terminal: the rows
// show, it follows a resize, refreshes, moves the selection with ↓ (the
// detail follows, and the selection follows its row when rows move), shows
// a failed fetch over the last report, and q leaves the alternate screen
// with the cursor shown and exit status 0.
func TestLiveTerminal(t *testing.T) {
	start := time.Now()
	cmd, tm := startChild(t, "live", 80, 24, modern)

	lines := tm.waitFor("rows", func(l []string) bool {
		return contains(l, "▶ shop/api-7") && contains(l, "  nginx.service") && contains(l, "  billing/invoi")
	})
	t.Logf("first screen (80x24) after %v:\n%s", time.Since(start).Round(time.Millisecond), strings.Join(lines, "\n"))
	if !strings.HasPrefix(lines[0], "tcptrace top") || lineIndex(lines, "  WORKLOAD") < 0 {
		t.Errorf("no header or table header:\n%s", strings.Join(lines, "\n"))
	}
	for _, l := range lines {
		if n := len([]rune(l)); n > 80 {
			t.Errorf("line of %d cells on an 80-column terminal: %q", n, l)
		}
	}
	if strings.Contains(lines[lineIndex(lines, "  WORKLOAD")], "CLOSE/m") {
		t.Errorf("CLOSE/m fits on 80 columns? %q", lines[lineIndex(lines, "  WORKLOAD")])
	}

	// Resize: the view takes the new width and height.
	tm.resize(100, 30)
	lines = tm.waitFor("the table at 100 columns", func(l []string) bool {
		i := lineIndex(l, "  WORKLOAD")
		return i >= 0 && strings.Contains(l[i], "CLOSE/m")
	})
	if len(lines) != 30 {
		t.Errorf("%d lines after the resize, want 30", len(lines))
	}

	// A few refreshes: the header's time moves on.
	seen := map[string]bool{}
	tm.waitFor("three refreshes", func(l []string) bool {
		if m := headerTime.FindStringSubmatch(l[0]); m != nil {
			seen[m[1]] = true
		}
		return len(seen) >= 3
	})

	// The first row (fastest leak) is selected, with its detail.
	lines = tm.waitFor("the first row selected", func(l []string) bool {
		return strings.Contains(selectedLine(l), "shop/api") && contains(l, "≤ 4.1ms │") && sparkRE.MatchString(strings.Join(l, "\n"))
	})
	t.Logf("screen (100x30), first row selected:\n%s", strings.Join(lines, "\n"))

	// ↓ selects the second row, whichever it is at that moment; its
	// histogram and sparkline replace the first row's.
	tm.send("\x1b[B")
	want := map[string]struct{ title, bucket, spark string }{
		"nginx.service": {"nginx.service :80 inbound", "≤ 1.0s │", "CLOSE-WAIT history ██▇███████"},
		"billing/invoi": {"billing/invoicer-0/app :5432 outbound", "≤ 4m28s │", "CLOSE-WAIT history ▁▅██▅█"},
	}
	var name string
	lines = tm.waitFor("the second row selected", func(l []string) bool {
		sel := selectedLine(l)
		for n, w := range want {
			if strings.Contains(sel, n) && contains(l, w.title) && contains(l, w.bucket) && contains(l, w.spark) && !contains(l, "≤ 4.1ms │") {
				name = n
				return true
			}
		}
		return false
	})
	t.Logf("screen after ↓ (%s selected):\n%s", name, strings.Join(lines, "\n"))
	row := lineIndex(lines, "▶ ")

	// The two rows swap on every refresh: the selection stays on its row.
	lines = tm.waitFor("the selected row moved", func(l []string) bool {
		i := lineIndex(l, "▶ ")
		return i >= 0 && i != row
	})
	if sel := selectedLine(lines); !strings.Contains(sel, name) {
		t.Errorf("the selection left %s when rows moved: %q\n%s", name, sel, strings.Join(lines, "\n"))
	}
	if !contains(lines, want[name].title) {
		t.Errorf("the detail is not %s's after rows moved:\n%s", name, strings.Join(lines, "\n"))
	}

	// Every fifth fetch fails: the status says so, the rows stay.
	lines = tm.waitFor("a failed fetch", func(l []string) bool {
		return strings.HasPrefix(l[1], "fetch failed at ") && strings.Contains(l[1], "connection refused")
	})
	if !contains(lines, "shop/api") || !strings.Contains(lines[1], "showing the report of") {
		t.Errorf("a failed fetch lost the last report:\n%s", strings.Join(lines, "\n"))
	}
	t.Logf("screen after a failed fetch:\n%s", strings.Join(lines, "\n"))

	// q quits: exit status 0, the alternate screen left, the cursor back,
	// bracketed paste off, the keyboard protocols popped.
	tm.send("q")
	quit := time.Now()
	if err := waitExit(t, cmd, tm); err != nil {
		t.Fatalf("exit: %v", err)
	}
	exited := time.Since(quit)
	tm.mu.Lock()
	raw, scr := tm.raw, tm.scr
	tm.mu.Unlock()
	checkRestored(t, raw, scr)
	if !bytes.Contains(raw, []byte("\x1b[?2026h")) {
		t.Error("no synchronized output on a terminal that has it")
	}
	if contains(scr.lines(), "WORKLOAD") {
		t.Errorf("the view is left on the main screen:\n%s", scr)
	}
	t.Logf("%d bytes of output; exit %v after q; live view test took %v", len(raw), exited.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// checkRestored checks that raw, the output of one Run, entered the
// alternate screen once, asked no start-up probe, and ends by leaving the
// alternate screen, showing the cursor and turning bracketed paste off,
// and that the terminal (scr) is as it was: see screen.restored.
func checkRestored(t *testing.T, raw []byte, scr *screen) {
	t.Helper()
	if p := probed(raw); p != nil {
		t.Errorf("terminal probes %q in the output", p)
	}
	if !bytes.HasSuffix(raw, []byte("\x1b[?1049l\x1b[?25h\x1b[?2004l")) {
		t.Errorf("the output does not end by leaving the alternate screen, showing the cursor and turning bracketed paste off: ...%q", raw[max(len(raw)-80, 0):])
	}
	if n, m := bytes.Count(raw, []byte("\x1b[?1049h")), bytes.Count(raw, []byte("\x1b[?1049l")); n != 1 || m != 1 {
		t.Errorf("the alternate screen entered %d times, left %d times", n, m)
	}
	if bytes.LastIndex(raw, []byte("\x1b[?1049h")) > bytes.LastIndex(raw, []byte("\x1b[?1049l")) {
		t.Error("the alternate screen was entered again after it was left")
	}
	if r := scr.restored(); r != "" {
		t.Errorf("after exit: %s; output ends %q", r, raw[max(len(raw)-120, 0):])
	}
}

// TestNoStartupProbe: a program that links the view but does not run it
// (any tcptrace command but top) writes to a terminal that never answers
// only what it prints, and exits at once. bubbletea v1's package init
// asked the terminal for its background colour (OSC 11, then a cursor
// position report) whenever stdout was a terminal, and waited up to 5s
// for the answer; a real terminal's answer landed in the shell's input
// after the program exited.
func TestNoStartupProbe(t *testing.T) {
	start := time.Now()
	cmd, tm := startChild(t, "hello", 80, 24, mute)
	if err := waitExit(t, cmd, tm); err != nil {
		t.Fatalf("exit: %v", err)
	}
	took := time.Since(start)
	tm.mu.Lock()
	raw := string(tm.raw)
	tm.mu.Unlock()
	if raw != "hello\r\n" {
		t.Errorf("on the terminal: %q, want %q (probes %q)", raw, "hello\r\n", probed([]byte(raw)))
	}
	// No probe written (above) is no wait for its answer: how long the
	// child took is logged, not asserted, for a loaded machine's sake.
	t.Logf("the child printed hello and exited in %v", took.Round(time.Millisecond))
}

// TestOnceOnTerminal writes WriteTable's table to a real terminal (one
// that never answers): plain text, no escape sequence.
func TestOnceOnTerminal(t *testing.T) {
	cmd, tm := startChild(t, "once", 100, 30, mute)
	if err := waitExit(t, cmd, tm); err != nil {
		t.Fatalf("exit: %v", err)
	}
	tm.mu.Lock()
	raw := string(tm.raw)
	tm.mu.Unlock()
	var want bytes.Buffer
	WriteTable(&want, sampleReport(1), 100)
	// The terminal turns \n into \r\n.
	if got := strings.ReplaceAll(raw, "\r\n", "\n"); got != want.String() {
		t.Errorf("on the terminal:\n%q\nwant:\n%q", got, want.String())
	}
	if i := strings.IndexAny(raw, "\x1b\x07"); i >= 0 {
		t.Errorf("escape or control sequence at %d: %q", i, raw[max(i-10, 0):min(i+20, len(raw))])
	}
}

// TestRunContext: Run draws exactly the model's view, returns ctx's error
// when ctx ends, and restores the terminal (in this process, on a
// pseudo-terminal pair that answers nothing).
func TestRunContext(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Cols: 100, Rows: 30}); err != nil {
		t.Fatal(err)
	}
	tm := newTerm(t, ptmx, 100, 30, mute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, tty, tty, time.Hour, func(context.Context) (report.Report, error) { return sampleReport(1), nil })
	}()

	// The screen is the model's view of 100x30, line for line.
	m := newModel(ctx, time.Hour, nil, newStyles(false))
	m.Update(tea.WindowSizeMsg{Width: 100, Height: 30})
	m.Update(fetchedMsg{rep: sampleReport(1)})
	want := strings.Split(view(m), "\n")
	for len(want) < 30 {
		want = append(want, "")
	}
	for i := range want {
		want[i] = strings.TrimRight(want[i], " ")
	}
	defer func() {
		if t.Failed() {
			t.Logf("the model's view:\n%s", strings.Join(want, "\n"))
		}
	}()
	tm.waitFor("the model's view", func(l []string) bool { return slices.Equal(l, want) })
	t.Logf("the view after %v", time.Since(start).Round(time.Millisecond))

	cancel()
	cancelled := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v, want context.Canceled", err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Run did not return in %v after ctx ended", waitTimeout)
	}
	t.Logf("Run returned %v after ctx ended", time.Since(cancelled).Round(time.Millisecond))
	tty.Close() // EIO on ptmx: all the output is read
	<-tm.done
	tm.mu.Lock()
	defer tm.mu.Unlock()
	checkRestored(t, tm.raw, tm.scr)
}

var _ io.Writer = (*screen)(nil)
