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
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/tcptrace/tcptrace/report"
)

// childEnv makes the test binary a child of the pseudo-terminal tests:
// "live" runs Run on its stdin and stdout, "once" writes one WriteTable.
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
// child wrote, feeds it to a screen, and answers the terminal queries a
// real terminal answers (the background colour and the cursor position,
// which termenv asks when a program starts on a terminal).
type term struct {
	t    *testing.T
	ptmx *os.File

	mu      sync.Mutex
	raw     []byte
	scr     *screen
	scanned int
	changed chan struct{} // signalled on every write
	done    chan struct{} // closed when the child's side closed
}

func newTerm(t *testing.T, ptmx *os.File, w, h int) *term {
	tm := &term{t: t, ptmx: ptmx, scr: newScreen(w, h), changed: make(chan struct{}, 1), done: make(chan struct{})}
	go tm.read()
	return tm
}

var queries = []struct{ query, answer string }{
	{"\x1b]11;?", "\x1b]11;rgb:0000/0000/0000\x1b\\"},
	{"\x1b[6n", "\x1b[1;1R"},
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
				for i, q := range queries {
					if j := bytes.Index(tm.raw[tm.scanned:], []byte(q.query)); j >= 0 && tm.scanned+j < at {
						next, at = i, tm.scanned+j
					}
				}
				if next < 0 {
					tm.scanned = max(tm.scanned, len(tm.raw)-8)
					break
				}
				answers = append(answers, queries[next].answer)
				tm.scanned = at + len(queries[next].query)
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

// waitFor waits (at most 15s) until cond holds on the screen, and returns
// that screen.
func (tm *term) waitFor(what string, cond func(lines []string) bool) []string {
	tm.t.Helper()
	deadline := time.After(15 * time.Second)
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
			tm.t.Fatalf("no %s in 15s; screen:\n%s", what, strings.Join(lines, "\n"))
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
// pseudo-terminal of w×h.
func startChild(t *testing.T, mode string, w, h int) (*exec.Cmd, *term) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "TERM=xterm-256color", "TZ=UTC", "LANG=C.UTF-8")
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
	return cmd, newTerm(t, ptmx, w, h)
}

// waitExit waits (at most 15s) for the child to exit, and for its output.
func waitExit(t *testing.T, cmd *exec.Cmd, tm *term) error {
	t.Helper()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("the child did not exit in 15s; screen:\n%s", strings.Join(tm.snapshot(), "\n"))
	}
	select {
	case <-tm.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the terminal did not close in 5s after the child exited")
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
	cmd, tm := startChild(t, "live", 80, 24)

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

	// q quits: exit status 0, the alternate screen left, the cursor back.
	tm.send("q")
	if err := waitExit(t, cmd, tm); err != nil {
		t.Fatalf("exit: %v", err)
	}
	tm.mu.Lock()
	raw, scr := tm.raw, tm.scr
	tm.mu.Unlock()
	if !bytes.HasSuffix(raw, []byte("\x1b[?1049l\x1b[?25h")) {
		t.Errorf("the output does not end by leaving the alternate screen and showing the cursor: ...%q", raw[max(len(raw)-80, 0):])
	}
	if bytes.LastIndex(raw, []byte("\x1b[?1049h")) > bytes.LastIndex(raw, []byte("\x1b[?1049l")) {
		t.Error("the alternate screen was entered again after it was left")
	}
	if scr.altActive || !scr.cursorVisible {
		t.Errorf("after exit: alternate screen %v, cursor visible %v", scr.altActive, scr.cursorVisible)
	}
	if contains(scr.lines(), "WORKLOAD") {
		t.Errorf("the view is left on the main screen:\n%s", scr)
	}
	t.Logf("%d bytes of output; live view test took %v", len(raw), time.Since(start).Round(time.Millisecond))
}

// termenvProbe is what any program linking bubbletea v1 writes at start-up
// on a terminal (its package init asks lipgloss for the background colour):
// the OSC 11 query and a cursor position request.
const termenvProbe = "\x1b]11;?\x1b\\\x1b[6n"

// TestOnceOnTerminal writes WriteTable's table to a real terminal: plain
// text, no escape sequence of its own.
func TestOnceOnTerminal(t *testing.T) {
	cmd, tm := startChild(t, "once", 100, 30)
	if err := waitExit(t, cmd, tm); err != nil {
		t.Fatalf("exit: %v", err)
	}
	tm.mu.Lock()
	raw := string(tm.raw)
	tm.mu.Unlock()
	if strings.HasPrefix(raw, termenvProbe) {
		t.Logf("start-up terminal probe of bubbletea v1's init (not WriteTable's): %q", termenvProbe)
		raw = raw[len(termenvProbe):]
	}
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

// TestRunContext: Run returns ctx's error when ctx ends, and restores the
// terminal (in this process, on a pseudo-terminal pair).
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
	tm := newTerm(t, ptmx, 100, 30)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, tty, tty, time.Hour, func(context.Context) (report.Report, error) { return sampleReport(1), nil })
	}()
	tm.waitFor("rows", func(l []string) bool { return contains(l, "nginx.service") })
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v, want context.Canceled", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return in 15s after ctx ended")
	}
	tty.Close() // EIO on ptmx: all the output is read
	<-tm.done
	tm.mu.Lock()
	defer tm.mu.Unlock()
	if tm.scr.altActive || !tm.scr.cursorVisible {
		t.Errorf("after ctx ended: alternate screen %v, cursor visible %v; output ends %q",
			tm.scr.altActive, tm.scr.cursorVisible, tm.raw[max(len(tm.raw)-80, 0):])
	}
}

var _ io.Writer = (*screen)(nil)
