package owner

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

// statLine builds a /proc/<pid>/stat line with the given comm and start
// time, other fields filled in as a real kernel would.
func statLine(comm, start string) string {
	return "1234 (" + comm + ") S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 " +
		start + " 12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in    string
		comm  string
		start uint64
		ok    bool
	}{
		{statLine("bash", "4242"), "bash", 4242, true},
		{statLine("a) b (c", "7"), "a) b (c", 7, true},
		{statLine(") S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21", "99"), ") S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21", 99, true},
		{statLine("new\nline", "5"), "new\nline", 5, true},
		{statLine("", "5"), "", 5, true},
		{statLine("x", "-1"), "", 0, false},
		{statLine("x", "abc"), "", 0, false},
		{"1234 (x) S 1 2", "", 0, false},
		{"1234 x) S", "", 0, false},
		{")(", "", 0, false},
		{"", "", 0, false},
	} {
		comm, start, err := parseStat([]byte(tc.in))
		if (err == nil) != tc.ok || comm != tc.comm || start != tc.start {
			t.Errorf("parseStat(%q) = %q, %d, %v; want %q, %d, ok=%v", tc.in, comm, start, err, tc.comm, tc.start, tc.ok)
		}
	}
}

func TestParseStatus(t *testing.T) {
	const real = "Name:\tbash\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\nPid:\t4243\nPPid:\t1\nTracerPid:\t0\nUid:\t1000\t1001\t1002\t1003\nGid:\t100\t100\t100\t100\n"
	for _, tc := range []struct {
		in   string
		uid  uint32
		tgid int
		ok   bool
	}{
		{real, 1000, 4242, true},
		{"Uid:\t4294967295\t0\t0\t0\nTgid:\t1", 4294967295, 1, true},
		{"Uid:\t4294967296\t0\t0\t0\nTgid:\t1", 0, 0, false},
		{"Tgid:\t1\n", 0, 0, false},
		{"Uid:\t0\n", 0, 0, false},
		{"Uid:\nTgid:\n", 0, 0, false},
		{"Tgid:\t0\nUid:\t0\n", 0, 0, false},
		{"", 0, 0, false},
	} {
		uid, tgid, err := parseStatus([]byte(tc.in))
		if (err == nil) != tc.ok || uid != tc.uid || tgid != tc.tgid {
			t.Errorf("parseStatus(%q) = %d, %d, %v; want %d, %d, ok=%v", tc.in, uid, tgid, err, tc.uid, tc.tgid, tc.ok)
		}
	}
}

func TestParseSocketLink(t *testing.T) {
	for in, want := range map[string]uint64{
		"socket:[12345]": 12345,
		"socket:[]":      0,
		"socket:[12":     0,
		"pipe:[12345]":   0,
		"/dev/null":      0,
	} {
		got, ok := parseSocketLink([]byte(in))
		if got != want || ok != (want != 0) {
			t.Errorf("parseSocketLink(%q) = %d, %v", in, got, ok)
		}
	}
}

func TestCleanCmdline(t *testing.T) {
	long := strings.Repeat("y", 300)
	for in, want := range map[string]string{
		"":                   "",
		"/bin/sh\x00-c\x00":  "/bin/sh -c",
		"a\x00\x00b\x00\x00": "a  b",
		"setproctitle text":  "setproctitle text",
		long:                 long[:MaxCmdline],
		strings.Repeat("z", MaxCmdline-1) + "\x00next": strings.Repeat("z", MaxCmdline-1),
	} {
		if got := cleanCmdline([]byte(in)); got != want {
			t.Errorf("cleanCmdline(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestParseSelf checks the parsers against this process's real files.
func TestParseSelf(t *testing.T) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	if _, start, err := parseStat(b); err != nil || start == 0 {
		t.Errorf("parseStat(self) = %d, %v", start, err)
	}
	b, err = os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	uid, tgid, err := parseStatus(b)
	if err != nil || uid != uint32(os.Getuid()) || tgid != os.Getpid() {
		t.Errorf("parseStatus(self) = %d, %d, %v", uid, tgid, err)
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(statLine("bash", "4242")))
	f.Add([]byte(statLine("a) b (c", "7")))
	f.Fuzz(func(t *testing.T, b []byte) {
		comm, _, err := parseStat(b)
		if err == nil && !bytes.Contains(b, []byte("("+comm+")")) {
			t.Errorf("comm %q not in input", comm)
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("Tgid:\t1\nUid:\t0\t0\t0\t0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, tgid, err := parseStatus(b)
		if err == nil && tgid <= 0 {
			t.Errorf("tgid %d accepted", tgid)
		}
	})
}

func FuzzParseSocketLink(f *testing.F) {
	for _, seed := range []string{"socket:[12345]", "socket:[]", "pipe:[7]", "socket:[18446744073709551615]", "socket:[-1]", "/dev/null"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ino, ok := parseSocketLink(b)
		if ok && fmt.Sprintf("socket:[%d]", ino) != string(b) {
			t.Fatalf("parseSocketLink(%q) = %d: does not read back", b, ino)
		}
	})
}
