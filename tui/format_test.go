package tui

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/report"
)

func TestFmtDur(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{-time.Second, "0s"},
		{850 * time.Microsecond, "850µs"},
		{12 * time.Millisecond, "12ms"},
		{4200 * time.Millisecond, "4.2s"},
		{42 * time.Second, "42s"},
		{3*time.Minute + 12*time.Second, "3m12s"},
		{2*time.Hour + 5*time.Minute + 59*time.Second, "2h05m"},
		{3*24*time.Hour + 4*time.Hour, "3d04h"},
	} {
		if got := fmtDur(c.d); got != c.want {
			t.Errorf("fmtDur(%v) = %q, want %q", c.d, got, c.want)
		}
	}
}

func TestFmtLatencyAndBuckets(t *testing.T) {
	last := events.HistBuckets - 1
	if got := fmtLatency(events.HistUpperBound(last)); got != ">9h32m" {
		t.Errorf("the last bucket's latency: %q", got)
	}
	for _, c := range []struct {
		i    int
		want string
	}{
		{0, "≤ 2µs"}, {8, "≤ 512µs"}, {9, "≤ 1.0ms"}, {11, "≤ 4.1ms"}, {13, "≤ 16ms"},
		{19, "≤ 1.0s"}, {27, "≤ 4m28s"}, {last, "> 9h32m"},
	} {
		if got := bucketLabel(c.i); got != c.want {
			t.Errorf("bucketLabel(%d) = %q, want %q", c.i, got, c.want)
		}
	}
	// Neighbouring bounds never print the same.
	for i := 1; i < events.HistBuckets; i++ {
		if bucketLabel(i) == bucketLabel(i-1) {
			t.Errorf("buckets %d and %d both %q", i-1, i, bucketLabel(i))
		}
	}
}

func TestFmtRate(t *testing.T) {
	for _, c := range []struct {
		v      float64
		signed bool
		want   string
	}{
		{0, true, "0"}, {0.01, true, "0"}, {0.4, true, "+0.4"}, {-1.5, true, "-1.5"},
		{12.1, true, "+12"}, {14.2, false, "14"}, {1234, false, "1.2k"}, {math.NaN(), false, "?"},
	} {
		if got := fmtRate(c.v, c.signed); got != c.want {
			t.Errorf("fmtRate(%v, %v) = %q, want %q", c.v, c.signed, got, c.want)
		}
	}
}

func TestWorkloadName(t *testing.T) {
	for _, c := range []struct {
		w    report.Workload
		want string
	}{
		{report.Workload{Namespace: "shop", Pod: "api-1", Container: "server", Cgroup: "/kubepods.slice/x"}, "shop/api-1/server"},
		{report.Workload{Namespace: "shop", Pod: "api-1"}, "shop/api-1"},
		{report.Workload{Cgroup: "/system.slice/nginx.service"}, "nginx.service"},
		{report.Workload{Cgroup: "/user.slice/user-1000.slice/session-3.scope"}, "user-1000/session-3.scope"},
		{report.Workload{Cgroup: "/system.slice/docker-0123456789abcdef0123.scope"}, "docker:0123456789ab"},
		{report.Workload{Cgroup: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234abcd_0000.slice/cri-containerd-0123456789abcdef.scope"}, "pod 1234abcd containerd:0123456789ab"},
		{report.Workload{Cgroup: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9f8e7d6c_1111.slice"}, "pod 9f8e7d6c"},
		{report.Workload{Cgroup: "/"}, "/"},
		{report.Workload{}, "?"},
	} {
		if got := workloadName(c.w); got != c.want {
			t.Errorf("workloadName(%+v) = %q, want %q", c.w, got, c.want)
		}
	}
}

func TestFitWorkload(t *testing.T) {
	k8s := report.Workload{Namespace: "shop", Pod: "api-7d9f8b6c5-x2x4q", Container: "server"}
	for _, c := range []struct {
		w    report.Workload
		n    int
		want string
	}{
		{k8s, 40, "shop/api-7d9f8b6c5-x2x4q/server"},
		{k8s, 20, "shop/api-7d9…/server"},
		{k8s, 12, "shop/a…erver"},
		{report.Workload{Cgroup: "/user.slice/user-1000.slice/session-3.scope"}, 16, "…session-3.scope"},
	} {
		got := fitWorkload(c.w, c.n)
		if got != c.want {
			t.Errorf("fitWorkload(%v, %d) = %q, want %q", workloadName(c.w), c.n, got, c.want)
		}
		if cellWidth(got) > c.n {
			t.Errorf("fitWorkload(%v, %d) = %q: %d cells", workloadName(c.w), c.n, got, cellWidth(got))
		}
	}
}

func TestColumnsOfARow(t *testing.T) {
	r := sampleReport(1).Rows
	if got := fmtOldest(&r[1]); got != ">2h05m" {
		t.Errorf("oldest of a socket older than tcptrace: %q", got)
	}
	if got := fmtExhaust(&r[2]); got != "never" {
		t.Errorf("exhaust when not growing: %q", got)
	}
	if got := fmtExhaust(&r[0]); got != "17m30s" {
		t.Errorf("exhaust: %q", got)
	}
	full := r[0]
	full.Holders = []report.Holder{{PID: 1, Comm: "x", OpenFDs: 1024, FDLimit: 1024}}
	if got := fmtExhaust(&full); got != "now" {
		t.Errorf("exhaust at the limit: %q", got)
	}
	out := full
	out.Exhausted, out.Holders = true, []report.Holder{{PID: 1, Comm: "x", OpenFDs: 1024, FDLimit: 1024, AcceptFailures: 3}}
	if got := fmtExhaust(&out); got != "exhausted" {
		t.Errorf("exhaust once accept() failed: %q", got)
	}
	if got := fmtHolders(r[0].Holders); got != "4242/server,4243/worker +1" {
		t.Errorf("holders: %q", got)
	}
	if got := fmtFDs(r[0].Holders[0]); got != "813/1024" {
		t.Errorf("fds: %q", got)
	}
	none := r[2]
	none.Closes = 0
	if got := quantile(&none, none.P99); got != "-" {
		t.Errorf("P99 without closes: %q", got)
	}
}

func TestSparklineAndBar(t *testing.T) {
	if got := sparkline([]uint64{0, 1, 2, 3, 4, 5, 6, 7}, 20); got != "▁▂▃▄▅▆▇█" {
		t.Errorf("sparkline 0..7: %q", got)
	}
	if got := sparkline([]uint64{0, 0, 0}, 20); got != "▁▁▁" {
		t.Errorf("sparkline of zeros: %q", got)
	}
	if got := sparkline([]uint64{9, 0, 7}, 2); got != "▁█" {
		t.Errorf("sparkline keeps the last samples: %q", got)
	}
	if got := bar(1, 10); got != strings.Repeat("█", 10) {
		t.Errorf("full bar: %q", got)
	}
	if got := bar(0.001, 10); got != "▏" {
		t.Errorf("a small count still shows: %q", got)
	}
	if got := bar(0.55, 10); got != "█████▌" {
		t.Errorf("bar(0.55, 10) = %q", got)
	}
}

func TestHistLines(t *testing.T) {
	r := sampleReport(1).Rows[0]
	lines := histLines(&r, 80)
	if len(lines) != 5 {
		t.Fatalf("%d lines for 5 non-empty buckets:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, label := range []string{"≤ 2.0ms", "≤ 4.1ms", "≤ 8.2ms", "≤ 16ms", "≤ 2.1s"} {
		if !strings.Contains(lines[i], label+" │") {
			t.Errorf("line %d %q: no %q", i, lines[i], label)
		}
		if cellWidth(lines[i]) > 80 {
			t.Errorf("line %d: %d cells", i, cellWidth(lines[i]))
		}
	}
	// The fullest bucket (500 of 1200) has the longest bar.
	if !strings.Contains(lines[1], strings.Repeat("█", 40)) || !strings.HasSuffix(lines[1], "500   42%") {
		t.Errorf("fullest bucket: %q", lines[1])
	}
	empty := report.Row{}
	if histLines(&empty, 80) != nil {
		t.Error("lines for an empty histogram")
	}
}
