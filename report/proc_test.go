package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCountFDs: our own descriptors, counted (from the directory's size
// on Linux 6.2+) as reading the directory counts them.
func TestCountFDs(t *testing.T) {
	before := countFDs("/proc/self/fd")
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	// Both count the descriptor they read the directory with.
	if before != len(entries) {
		t.Errorf("counted %d descriptors, the directory has %d entries", before, len(entries))
	}
	for range 10 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	if after := countFDs("/proc/self/fd"); after != before+10 {
		t.Errorf("%d descriptors after opening 10 more than %d", after, before)
	}
	if n := countFDs(filepath.Join(t.TempDir(), "gone")); n != 0 {
		t.Errorf("a missing directory has %d descriptors", n)
	}
	// Elsewhere than procfs, entries are counted.
	dir := t.TempDir()
	for _, name := range []string{"0", "1", "2"} {
		os.WriteFile(filepath.Join(dir, name), nil, 0o644)
	}
	if n := countFDs(dir); n != 3 {
		t.Errorf("fake fd directory: %d, want 3", n)
	}
}

func TestFDLimit(t *testing.T) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if got := readFDLimit("/proc/self/limits"); uint64(got) != rl.Cur {
		t.Errorf("our limit %d, getrlimit says %d", got, rl.Cur)
	}
	for _, c := range []struct {
		text string
		want int
	}{
		{"Limit                     Soft Limit           Hard Limit           Units\n" +
			"Max open files            1024                 524288               files\n", 1024},
		{"Max open files            unlimited            unlimited            files\n", 0},
		{"Max processes             62884                62884                processes\n", 0},
		{"Max open files\n", 0},
		{"", 0},
	} {
		if got := parseFDLimit(strings.NewReader(c.text)); got != c.want {
			t.Errorf("%q: %d, want %d", c.text, got, c.want)
		}
	}
	if got := readFDLimit(filepath.Join(t.TempDir(), "limits")); got != 0 {
		t.Errorf("missing file: %d", got)
	}
}

// TestProcCache: a process is read at most once a second, and what went
// stale is dropped.
func TestProcCache(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, 1, 3, 100)
	clk := newFakeClock()
	c := newProcCache(root, clk.Now)
	if u := c.get(1); u != (fdUse{3, 100}) {
		t.Fatalf("%+v", u)
	}
	fakeProc(t, root, 1, 5, 200) // 2 more, new limit
	clk.add(999 * time.Millisecond)
	if u := c.get(1); u != (fdUse{3, 100}) {
		t.Errorf("read again within a second: %+v", u)
	}
	clk.add(time.Millisecond)
	if u := c.get(1); u != (fdUse{5, 200}) {
		t.Errorf("a second later: %+v", u)
	}
	if u := c.get(2); u != (fdUse{}) {
		t.Errorf("no such process: %+v", u)
	}
	for pid := 10; pid < 200; pid++ {
		c.get(pid)
		clk.add(100 * time.Millisecond)
	}
	c.mu.Lock()
	n := len(c.m)
	c.mu.Unlock()
	if n > 64 {
		t.Errorf("%d processes cached", n)
	}
}
