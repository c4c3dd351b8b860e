package tui

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tcptrace/tcptrace/report"
)

func writeTable(t *testing.T, r report.Report, w int) string {
	t.Helper()
	var b bytes.Buffer
	if err := WriteTable(&b, r, w); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// plain fails on anything but printable text and newlines.
func plain(t *testing.T, s string) {
	t.Helper()
	for i, r := range s {
		if r == '\n' {
			continue
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			t.Fatalf("control character %q at %d: %q", r, i, s[max(i-20, 0):min(i+20, len(s))])
		}
	}
}

func tableHeader(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "WORKLOAD") {
			return l
		}
	}
	return ""
}

func TestWriteTableFull(t *testing.T) {
	out := writeTable(t, sampleReport(1), 0)
	plain(t, out)
	t.Logf("WriteTable, no width limit:\n%s", out)
	want := []string{
		"2025-03-14T12:00:01Z  window 5m00s  3 rows",
		"WORKLOAD                        PORT DIR CW STUCK NEW/m CLOSE/m GROWTH/m OLDEST   P50   P90   P99   MAX       FDS EXHAUST HOLDERS",
		"shop/api-7d9f8b6c5-x2x4q/server 8080 in  41    31    14     2.1      +12  3m13s 4.1ms 8.2ms  16ms  2.1s  813/1024  17m30s 4242/server,4243/worker +1",
		"nginx.service                     80 in   9     3   1.5     1.1     +0.4 >2h05m  1.0s  2.1s  2.1s  2.1s 130/65536  90d00h 901/nginx",
		"billing/invoicer-0/app          5432 out  2     0   0.2     0.2        0      - 4m28s 8m56s 8m56s 8m56s         -   never 3100/java",
		"our sockets waiting on the peer to close (FIN_WAIT2): a leaking server elsewhere",
		"PEER                   NETNS  FIN_WAIT2  TIME_WAIT  OLDEST FIN_WAIT2",
		"10.0.3.7:8443     4026531840        120         14             7m03s",
		"192.168.1.20:443  4026532201          0        310                 -",
	}
	for _, w := range want {
		if !strings.Contains(out, w+"\n") {
			t.Errorf("no line %q", w)
		}
	}
}

// The rows arrive in any order: the table is in leak-rate order.
func TestWriteTableSorts(t *testing.T) {
	r := sampleReport(1)
	r.Rows[0], r.Rows[2] = r.Rows[2], r.Rows[0]
	out := writeTable(t, r, 0)
	a, n, b := strings.Index(out, "\nshop/"), strings.Index(out, "\nnginx"), strings.Index(out, "\nbilling/")
	if !(a < n && n < b) {
		t.Errorf("not in leak-rate order:\n%s", out)
	}
}

func TestWriteTableWidths(t *testing.T) {
	r := sampleReport(1)
	out := writeTable(t, r, 0)
	full, tw := tableHeader(out), 0
	for _, l := range strings.Split(out, "\n") {
		tw = max(tw, cellWidth(l))
	}
	for _, w := range []int{200, 140, 120, 100, 90, 80, 70, 60, 50, 40, 20} {
		out := writeTable(t, r, w)
		plain(t, out)
		for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			if cellWidth(l) > w {
				t.Errorf("width %d: line of %d cells: %q", w, cellWidth(l), l)
			}
		}
		if w >= 60 && (!strings.Contains(tableHeader(out), " EXHAUST") || !strings.Contains(out, " 17m30s")) {
			t.Errorf("width %d: EXHAUST cut:\n%s", w, out)
		}
		if w == 100 || w == 60 {
			t.Logf("WriteTable, width %d:\n%s", w, out)
		}
	}
	// Just narrower than the table: only the workload column is cut.
	out = writeTable(t, r, tw-5)
	if h := tableHeader(out); h != strings.Replace(full, "WORKLOAD     ", "WORKLOAD", 1) {
		t.Errorf("header %q, want all the columns of %q", h, full)
	}
	if !strings.Contains(out, "\nshop/api-7d9f8b6c5…/server 8080") {
		t.Errorf("the workload is not the column cut:\n%s", out)
	}
}

// Columns go in order: HOLDERS, P90, P50, MAX, CLOSE/m, NEW/m, FDS; the
// others stay.
func TestWriteTableDropOrder(t *testing.T) {
	r := sampleReport(1)
	order := []string{"HOLDERS", "P90", "P50", "MAX", "CLOSE/m", "NEW/m", "FDS"}
	keep := []string{"WORKLOAD", "PORT", "DIR", "CW", "STUCK", "GROWTH/m", "OLDEST", "P99", "EXHAUST"}
	has := func(h, col string) bool {
		for _, f := range strings.Fields(h) {
			if f == col {
				return true
			}
		}
		return false
	}
	gone := 0
	// Below 56 columns, the table (the workload cut to 8) is cut at the
	// right edge.
	for w := 160; w >= 56; w-- {
		h := tableHeader(writeTable(t, r, w))
		for _, col := range keep {
			if !has(h, col) {
				t.Fatalf("width %d: %s left out: %q", w, col, h)
			}
		}
		n := 0
		for n < len(order) && !has(h, order[n]) {
			n++
		}
		for _, col := range order[n:] {
			if !has(h, col) {
				t.Fatalf("width %d: %s left out before %s: %q", w, col, order[n], h)
			}
		}
		gone = max(gone, n)
	}
	if gone != len(order) {
		t.Errorf("at 56 columns, only %d columns left out", gone)
	}
}

func TestWriteTableEmpty(t *testing.T) {
	out := writeTable(t, report.Report{Time: base, Window: 5 * 60e9}, 80)
	plain(t, out)
	for _, w := range []string{"0 rows", "no sockets in CLOSE-WAIT", noPeers} {
		if !strings.Contains(out, w) {
			t.Errorf("no %q in:\n%s", w, out)
		}
	}
}

// A comm or a cgroup name cannot put an escape sequence on the terminal.
func TestWriteTableSanitizes(t *testing.T) {
	r := sampleReport(1)
	r.Rows[0].Holders[0].Comm = "evil\x1b[2J"
	r.Rows[1].Workload.Cgroup = "/system.slice/x\x07\x1b]0;pwned\x07.service"
	r.Peers[0].Addr = "1.2.3.4:5\r\n"
	out := writeTable(t, r, 0)
	plain(t, out)
	if !strings.Contains(out, "4242/evil?[2J") {
		t.Errorf("comm not shown sanitized:\n%s", out)
	}
}

// Listeners in trouble get a section of their own, before the peers, in
// the table and on the live screen; none, no section.
func TestListenersSection(t *testing.T) {
	r := sampleReport(1)
	if out := writeTable(t, r, 0); strings.Contains(out, listenersTitle) {
		t.Errorf("a listeners section without listeners:\n%s", out)
	}
	r.Listeners = []report.Listener{
		{Addr: "0.0.0.0:5984", NetNS: 4026531840, Workload: report.Workload{Cgroup: "/system.slice/couchdb.service"}, Queue: 129, Limit: 128, Drops: 4512, DropsPerMinute: 37.5},
	}
	r.ListenersOmitted = 2
	out := writeTable(t, r, 0)
	for _, w := range []string{
		listenersTitle,
		"LISTENER           NETNS  WORKLOAD           QUEUE  DROPS  DROPS/m",
		"0.0.0.0:5984  4026531840  couchdb.service  129/128   4512     37.5",
		"and 2 more listeners not shown",
	} {
		if !strings.Contains(out, w+"\n") {
			t.Errorf("no line %q in:\n%s", w, out)
		}
	}
	if strings.Index(out, listenersTitle) > strings.Index(out, peersTitle) {
		t.Errorf("listeners after the peers:\n%s", out)
	}
	if v := view(testModel(160, 40, &r)); !strings.Contains(v, "0.0.0.0:5984") || !strings.Contains(v, listenersTitle) {
		t.Errorf("the live view shows no listener:\n%s", v)
	}
}
