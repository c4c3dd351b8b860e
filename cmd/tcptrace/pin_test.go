package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/testenv"
)

// bpffs mounts a bpf filesystem of the test's own and returns it.
func bpffs(t *testing.T) string {
	t.Helper()
	testenv.RequirePrivileged(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount a bpf filesystem: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// With --pin-table a restarted tcptrace adopts the kernel's CLOSE-WAIT
// table: sockets still in CLOSE-WAIT keep the age they had (not "unknown",
// as a fresh start-up listing would say), one that closed while no tracer
// ran is pruned and not reported, and one that entered CLOSE-WAIT meanwhile
// is found by the listing with its age unknown.
func TestPinnedTableSurvivesRestart(t *testing.T) {
	fs := bpffs(t)
	pinDir := filepath.Join(fs, "tcptrace")
	ln := listen(t, "tcp4", "127.0.0.1:0")
	args := []string{"closewait", "--port", portArg(ln), "--threshold", "1s", "--pin-table", "--pin-dir", pinDir}

	first := startTracer(t, args...)
	var leaks []conn
	for range 3 {
		c := dial(t, ln)
		if err := c.client.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		leaks = append(leaks, c)
	}
	finAt := time.Now()
	for range leaks {
		ev := first.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" })
		if !*ev.AgeKnown {
			t.Errorf("first run: stuck %v, want its age known", ev)
		}
	}
	first.stop()
	if _, err := os.Stat(filepath.Join(pinDir, "closewait")); err != nil {
		t.Fatalf("the table is not pinned after a clean exit: %v", err)
	}

	// No tracer runs: one leaked socket is closed, a new one leaks.
	closed := leaks[1]
	closed.server.Close()
	kept := []conn{leaks[0], leaks[2]}
	late := dial(t, ln)
	if err := late.client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// A restart well after the FINs: an age counted afresh from the
	// restart would be visibly short of the time since the FIN.
	time.Sleep(1500 * time.Millisecond)
	restart := time.Now()
	second := startTracer(t, args...)
	want := map[int]conn{kept[0].clientPort: kept[0], kept[1].clientPort: kept[1], late.clientPort: late}
	for range want {
		ev := second.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" })
		c, ok := want[ev.RemotePort]
		if !ok || !c.isServer(ev) {
			t.Errorf("second run: stuck %v, want one of the leaked server sockets still in CLOSE-WAIT", ev)
			continue
		}
		delete(want, ev.RemotePort)
		if c == late {
			if *ev.AgeKnown {
				t.Errorf("socket leaked while no tracer ran: %v, want its age unknown", ev)
			}
			continue
		}
		// The report came after the restart, and the FIN before finAt.
		if age := time.Duration(*ev.AgeNS); !*ev.AgeKnown || age < restart.Sub(finAt) {
			t.Errorf("adopted socket: stuck %v, want its age known and counted from its FIN, over %v ago", ev, restart.Sub(finAt))
		}
	}
	for _, ev := range second.drain() {
		if closed.isServer(ev) {
			t.Errorf("the socket closed while no tracer ran was reported: %v", ev)
		}
	}
	if !strings.Contains(second.stderr.String(), "still_in_close_wait=2 closed_meanwhile=1") {
		t.Errorf("no adoption line saying 2 kept, 1 pruned:\n%s", second.stderr.String())
	}
	second.stop()
}

// Without --pin-table nothing is pinned, even when tcptrace is killed.
func TestNothingPinnedByDefault(t *testing.T) {
	fs := bpffs(t)
	list := func() string {
		entries, err := os.ReadDir(fs)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return strings.Join(names, " ")
	}
	before := list() // a new mount may hold the kernel's own (maps.debug)
	pinDir := filepath.Join(fs, "tcptrace")
	p := startTracer(t, "closewait", "--pin-dir", pinDir)
	_ = p.cmd.Process.Kill()
	<-p.done
	_ = p.cmd.Wait()
	if after := list(); after != before {
		t.Errorf("bpffs holds %q after a killed run without --pin-table, %q before", after, before)
	}
}

// Two tracers never share one pinned table; a directory that is not on a
// bpf filesystem is refused in one line.
func TestPinDirInUseOrWrong(t *testing.T) {
	fs := bpffs(t)
	pinDir := filepath.Join(fs, "tcptrace")
	startTracer(t, "closewait", "--pin-table", "--pin-dir", pinDir)
	for _, tc := range []struct{ dir, want string }{
		{pinDir, "in use by another tcptrace"},
		{filepath.Join(t.TempDir(), "x"), "is not on a bpf filesystem"},
	} {
		cmd := tcptraceCmd(nil, "closewait", "--pin-table", "--pin-dir", tc.dir, "--output", "json")
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if err == nil || !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Errorf("--pin-dir %s: %v, want exit 1", tc.dir, err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if last := lines[len(lines)-1]; !strings.HasPrefix(last, "tcptrace: ") || !strings.Contains(last, tc.want) {
			t.Errorf("--pin-dir %s: last line %q, want one saying %q", tc.dir, last, tc.want)
		}
	}
}
