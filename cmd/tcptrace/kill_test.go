package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/schemacheck"
	"github.com/tcptrace/tcptrace/internal/testenv"
)

// fixture is a killFixture helper in a network namespace of its own.
type fixture struct {
	h            *helper
	netns        uint64
	portA, portB int
	clients      map[string]int // name -> client port
}

func startFixture(t *testing.T) *fixture {
	t.Helper()
	testenv.RequirePrivileged(t)
	f := &fixture{h: startHelper(t, "kill-fixture", syscall.CLONE_NEWNET), clients: map[string]int{}}
	if _, err := fmt.Sscanf(f.h.line(t), "ports %d %d", &f.portA, &f.portB); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	for _, kv := range strings.Fields(strings.TrimPrefix(f.h.line(t), "clients ")) {
		name, port, _ := strings.Cut(kv, "=")
		f.clients[name], _ = strconv.Atoi(port)
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", f.h.cmd.Process.Pid), &st); err != nil {
		t.Fatal(err)
	}
	f.netns = st.Ino
	return f
}

// young leaks one more socket on port A, named name (a4 when empty).
func (f *fixture) young(t *testing.T, name string) {
	t.Helper()
	fmt.Fprintln(f.h.stdin, "young", name)
	name, port, _ := strings.Cut(f.h.line(t), "=")
	f.clients[name], _ = strconv.Atoi(port)
}

// probe writes to and reads every server socket the fixture holds: eof
// (still in CLOSE-WAIT), open (ESTABLISHED), or the error.
func (f *fixture) probe(t *testing.T) map[string]string {
	t.Helper()
	fmt.Fprintln(f.h.stdin, "probe")
	got := map[string]string{}
	for _, kv := range strings.Fields(f.h.line(t)) {
		name, res, _ := strings.Cut(kv, "=")
		got[name] = res
	}
	return got
}

// closeWaitInSS counts the sockets ss shows in CLOSE-WAIT in the fixture's
// network namespace.
func (f *fixture) closeWaitInSS(t *testing.T) int {
	t.Helper()
	testenv.RequireTool(t, "ss", "iproute2")
	out, err := exec.Command(testenv.RequireTool(t, "nsenter", "util-linux"), "-t", strconv.Itoa(f.h.cmd.Process.Pid), "-n", "ss", "-Htan", "state", "close-wait").Output()
	if err != nil {
		t.Fatalf("ss in the fixture's namespace: %v", err)
	}
	return strings.Count(string(out), "\n")
}

// kill runs tcptrace kill; it returns the events written, stderr and the
// exit code.
func kill(t *testing.T, args ...string) ([]jsonEvent, string, int) {
	t.Helper()
	cmd := tcptraceCmd(nil, append([]string{"kill", "--output", "json"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var evs []jsonEvent
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if err := schemacheck.Line(t, sc.Text()); err != nil {
			t.Errorf("line fails the schema: %v\n%s", err, sc.Text())
		}
		var ev jsonEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("%v: %s", err, sc.Text())
		}
		evs = append(evs, ev)
	}
	return evs, stderr.String(), code
}

// byClient names events by the fixture connection they are about.
func (f *fixture) byClient(t *testing.T, evs []jsonEvent, kind string) map[string]jsonEvent {
	t.Helper()
	got := map[string]jsonEvent{}
	for _, ev := range evs {
		if ev.Event != kind {
			t.Errorf("event %v, want %s", ev, kind)
			continue
		}
		for name, port := range f.clients {
			if ev.RemotePort == port && uint64(ev.NetNS) == f.netns {
				got[name] = ev
			}
		}
	}
	return got
}

func names(m map[string]jsonEvent) string {
	var s []string
	for _, n := range []string{"a1", "a2", "a3", "a4", "b1"} {
		if _, ok := m[n]; ok {
			s = append(s, n)
		}
	}
	return strings.Join(s, ",")
}

// Only the matching sockets are destroyed; the holder's next write fails;
// sockets in other states, of other ports, processes and namespaces
// survive; a dry run, a refusal and an unconfirmed run change nothing.
func TestKillDestroysOnlyWhatMatches(t *testing.T) {
	f, other := startFixture(t), startFixture(t)
	ns := strconv.FormatUint(f.netns, 10)
	portA := strconv.Itoa(f.portA)
	unchanged := func(what string) {
		t.Helper()
		if got := f.probe(t); got["a1"] != "eof" || got["a2"] != "eof" || got["a3"] != "open" || got["b1"] != "eof" {
			t.Errorf("after %s: %v, want everything as it was", what, got)
		}
		if n := f.closeWaitInSS(t); n != 3 {
			t.Errorf("after %s: ss shows %d sockets in CLOSE-WAIT, want 3", what, n)
		}
	}

	evs, stderr, code := kill(t, "--older-than", "0s", "--any-age", "--netns", ns, "--port", portA, "--dry-run")
	if got := f.byClient(t, evs, "not_destroyed"); code != 0 || names(got) != "a1,a2" || got["a1"].Reason != "dry_run" ||
		len(got["a1"].Owner) != 1 || got["a1"].Owner[0].PID != f.h.cmd.Process.Pid {
		t.Errorf("dry run: exit %d, %v, want a1 and a2 listed with their holder %d:\n%s", code, evs, f.h.cmd.Process.Pid, stderr)
	}
	unchanged("a dry run")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--any-age", "--netns", ns}, "--older-than is required"},
		{[]string{"--older-than", "0s", "--netns", ns}, "--any-age"},
		{[]string{"--older-than", "0s", "--any-age", "--netns", ns}, "give --yes"}, // stdin is not a terminal
		{[]string{"--older-than", "banana", "--any-age"}, "not a duration"},
		{[]string{"--older-than", "0s", "--any-age", "--cgroup", "/x", "--container", "abcdefabcdef"}, "not both"},
	} {
		_, stderr, code := kill(t, tc.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != 2 || !strings.Contains(lines[len(lines)-1], tc.want) {
			t.Errorf("kill %v: exit %d, stderr %q; want exit 2 saying %q", tc.args, code, stderr, tc.want)
		}
	}
	unchanged("refused runs")

	evs, stderr, code = kill(t, "--older-than", "0s", "--any-age", "--netns", ns, "--port", portA, "--yes")
	got := f.byClient(t, evs, "destroyed")
	if code != 0 || names(got) != "a1,a2" {
		t.Fatalf("kill: exit %d, destroyed %v, want a1 and a2:\n%s", code, evs, stderr)
	}
	if ev := got["a1"]; ev.Method == "" || ev.OwnerSource != "proc" || ev.Owner[0].PID != f.h.cmd.Process.Pid || *ev.AgeKnown {
		t.Errorf("destroyed %v, want the method, its holder, age unknown", ev)
	}
	probe := f.probe(t)
	for _, name := range []string{"a1", "a2"} {
		if probe[name] != "ECONNABORTED" {
			t.Errorf("the holder's write on destroyed %s: %s, want ECONNABORTED", name, probe[name])
		}
	}
	if probe["a3"] != "open" || probe["b1"] != "eof" {
		t.Errorf("survivors: %v, want a3 open (ESTABLISHED), b1 in CLOSE-WAIT (another port)", probe)
	}
	if n := f.closeWaitInSS(t); n != 1 {
		t.Errorf("ss shows %d sockets in CLOSE-WAIT, want b1 alone", n)
	}
	if n := other.closeWaitInSS(t); n != 3 {
		t.Errorf("the other namespace has %d sockets in CLOSE-WAIT, want its 3", n)
	}

	// By process: the other fixture's three, nothing of this one's.
	evs, stderr, code = kill(t, "--older-than", "0s", "--any-age", "--pid", strconv.Itoa(other.h.cmd.Process.Pid), "--yes")
	if got := other.byClient(t, evs, "destroyed"); code != 0 || names(got) != "a1,a2,b1" {
		t.Errorf("kill --pid: exit %d, %v, want the other fixture's a1, a2, b1:\n%s", code, evs, stderr)
	}
	if n := f.closeWaitInSS(t); n != 1 {
		t.Errorf("kill --pid of another process: %d sockets in CLOSE-WAIT here, want b1 still", n)
	}
}

// With --from, ages come from a running tcptrace: the old sockets are
// destroyed, a younger one survives. Whether a socket is younger than the
// cut when kill decides depends on how long kill takes to start: a round
// where the young socket had aged past the cut by then (every destroyed
// socket's age says so) proves nothing, and the next round doubles the
// cut.
func TestKillAgesFromRunningTracer(t *testing.T) {
	_, base := startWithMetrics(t)
	f := startFixture(t) // after tcptrace: it saw the FINs
	ns, portA := strconv.FormatUint(f.netns, 10), strconv.Itoa(f.portA)
	old := []string{"a1", "a2"}
	for round, cut := 1, time.Second; ; round, cut = round+1, 2*cut {
		// The old sockets are past the cut by the running tcptrace's
		// count before the young one leaks.
		waitAged(t, base, f, old, cut)
		young := fmt.Sprintf("y%d", round)
		f.young(t, young)
		evs, stderr, code := kill(t, "--from", base, "--older-than", cut.String(), "--netns", ns, "--port", portA, "--yes")
		got := f.byClient(t, evs, "destroyed")
		if code != 0 {
			t.Fatalf("kill --from: exit %d, %v:\n%s", code, evs, stderr)
		}
		for name, ev := range got {
			if !*ev.AgeKnown || time.Duration(*ev.AgeNS) < cut {
				t.Errorf("destroyed %s %v, want its age known from the running tcptrace and at least %v", name, ev, cut)
			}
		}
		for _, name := range old {
			if _, ok := got[name]; !ok {
				t.Fatalf("kill --from --older-than %v: destroyed %v, want %v (older than the cut):\n%s", cut, evs, old, stderr)
			}
		}
		if len(got) != len(old)+1 {
			if len(got) != len(old) {
				t.Fatalf("kill --from --older-than %v destroyed %v, want %v and perhaps %s", cut, evs, old, young)
			}
			// The young one survived: the cut was honoured.
			if probe := f.probe(t); probe[young] != "eof" || probe["b1"] != "eof" {
				t.Errorf("survivors %v, want %s (younger) and b1 (another port) in CLOSE-WAIT", probe, young)
			}
			break
		}
		if cut >= 32*time.Second {
			t.Fatalf("kill destroyed the young socket in every round, up to a %v cut", cut)
		}
		t.Logf("round %d: %s was past the %v cut when kill listed it: again with %v", round, young, cut, 2*cut)
		// Everything was destroyed: a new old socket for the next round.
		next := fmt.Sprintf("o%d", round+1)
		f.young(t, next)
		old = []string{next}
	}
	_, stderr, code := kill(t, "--from", "127.0.0.1:1", "--older-than", "1s", "--yes")
	if code != 1 || !strings.Contains(stderr, "--from 127.0.0.1:1") {
		t.Errorf("--from an address where nothing listens: exit %d, %q", code, stderr)
	}
}

// waitAged waits until the running tcptrace at base gives every named
// fixture socket an age of at least age.
func waitAged(t *testing.T, base string, f *fixture, names []string, age time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(eventTimeout + age); ; time.Sleep(50 * time.Millisecond) {
		ages := map[int]time.Duration{} // client port -> age
		_, body := get(t, base+"/api/v1/closewait")
		for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
			var ev jsonEvent
			if json.Unmarshal([]byte(line), &ev) != nil || ev.NetNS != f.netns || ev.AgeKnown == nil || !*ev.AgeKnown {
				continue
			}
			ages[ev.RemotePort] = time.Since(eventTime(t, ev))
		}
		aged := true
		for _, name := range names {
			aged = aged && ages[f.clients[name]] >= age
		}
		if aged {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the running tcptrace does not give %v an age of %v: %v\n%s", names, age, ages, body)
		}
	}
}

// Without --yes on a terminal, kill lists the sockets and asks; only "y"
// destroys them.
func TestKillAsksOnATerminal(t *testing.T) {
	f := startFixture(t)
	run := func(answer string) string {
		t.Helper()
		cmd := tcptraceCmd(nil, "kill", "--older-than", "0s", "--any-age", "--netns", strconv.FormatUint(f.netns, 10),
			"--port", strconv.Itoa(f.portA))
		tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 200})
		if err != nil {
			t.Fatal(err)
		}
		defer tty.Close()
		var out bytes.Buffer
		buf := make([]byte, 4096)
		deadline := time.Now().Add(eventTimeout)
		for !strings.Contains(out.String(), "[y/N]") {
			if time.Now().After(deadline) {
				t.Fatalf("no question on the terminal:\n%s", out.String())
			}
			n, err := tty.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				t.Fatalf("terminal: %v\n%s", err, out.String())
			}
		}
		fmt.Fprintln(tty, answer)
		done := make(chan struct{})
		go func() { io.Copy(&out, tty); close(done) }()
		waitErr := cmd.Wait()
		select {
		case <-done: // the terminal's output read to its end
		case <-time.After(eventTimeout):
			t.Fatalf("answered %q: the terminal's output did not end", answer)
		}
		if waitErr != nil {
			t.Errorf("answered %q: %v\n%s", answer, waitErr, out.String())
		}
		return out.String()
	}
	screen := run("n")
	if !regexp.MustCompile(`(?s)not_destroyed.*not_destroyed.*Destroy these 2 sockets\?`).MatchString(screen) {
		t.Errorf("the terminal shows no table of the 2 sockets before the question:\n%s", screen)
	}
	if got := f.probe(t); got["a1"] != "eof" || got["a2"] != "eof" {
		t.Errorf("answered n: %v, want nothing destroyed", got)
	}
	screen = run("y")
	if strings.Count(screen, "destroyed ") < 2 {
		t.Errorf("answered y: the terminal shows no destroyed rows:\n%s", screen)
	}
	if got := f.probe(t); got["a1"] != "ECONNABORTED" || got["a2"] != "ECONNABORTED" || got["a3"] != "open" {
		t.Errorf("answered y: %v, want a1 and a2 destroyed, a3 open", got)
	}
}

// kill's table keeps its columns in line for every outcome: not_destroyed
// (the longest event name) under the same single header as the rest.
func TestKillTableAligned(t *testing.T) {
	testenv.RequirePrivileged(t)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	leakHere(t, ln)
	leakHere(t, ln)
	var rows []string
	var out string
	for deadline := time.Now().Add(eventTimeout); ; time.Sleep(20 * time.Millisecond) {
		cmd := tcptraceCmd(nil, "kill", "--older-than", "0s", "--any-age", "--dry-run", "--port", portArg(ln), "--output", "table")
		b, err := cmd.Output()
		if err != nil {
			t.Fatalf("kill --dry-run: %v\n%s", err, b)
		}
		out, rows = string(b), nil
		for line := range strings.Lines(out) {
			if strings.Contains(line, "not_destroyed") {
				rows = append(rows, line)
			}
		}
		if len(rows) == 2 || time.Now().After(deadline) {
			break
		}
	}
	if len(rows) != 2 {
		t.Fatalf("want two not_destroyed rows:\n%s", out)
	}
	if n := strings.Count(out, "TIME "); n != 1 {
		t.Errorf("%d headers, want 1:\n%s", n, out)
	}
	header := lineWith(out, "TIME ")
	for _, row := range rows {
		for _, col := range []string{"LOCAL", "REMOTE", "DETAIL"} {
			i := strings.Index(header, col)
			if i <= 0 || row[i-1] != ' ' || row[i] == ' ' {
				t.Errorf("row %q: column %s does not start under its header %q", row, col, header)
			}
		}
	}
}
