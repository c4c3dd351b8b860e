package tui

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/x/ansi"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/report"
)

// fmtDur formats a duration compactly, two units at most: 850µs, 12ms,
// 4.2s, 42s, 3m12s, 2h05m, 3d04h.
func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Millisecond:
		return strconv.FormatInt(int64(d/time.Microsecond), 10) + "µs"
	case d < time.Second:
		return strconv.FormatInt(int64(d/time.Millisecond), 10) + "ms"
	case d < 10*time.Second:
		return strconv.FormatFloat(float64(d/time.Millisecond)/1000, 'f', 1, 64) + "s"
	case d < time.Minute:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", d/time.Minute, d%time.Minute/time.Second)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", d/time.Hour, d%time.Hour/time.Minute)
	}
	return fmt.Sprintf("%dd%02dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
}

// lastBucketLow is the lower bound of the last histogram bucket, which has
// no upper bound: a latency at or past HistUpperBound(last) is shown as
// "> lastBucketLow".
var lastBucketLow = events.HistUpperBound(events.HistBuckets - 2)

// fmtLatency formats a quantile of the FIN-to-close histogram (a bucket
// bound) as the histogram labels it.
func fmtLatency(d time.Duration) string {
	if d >= events.HistUpperBound(events.HistBuckets-1) {
		return ">" + fmtDur(lastBucketLow)
	}
	return fmtBound(d)
}

// fmtRate formats a per-minute rate: 0, 0.4, 12, 1.2k; signed adds a + to
// positive values (growth).
func fmtRate(v float64, signed bool) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "?"
	}
	var s string
	a := math.Abs(v)
	switch {
	case a < 0.05:
		return "0"
	case a < 10:
		s = strconv.FormatFloat(a, 'f', 1, 64)
	case a < 1000:
		s = strconv.FormatFloat(a, 'f', 0, 64)
	case a < 1e6:
		s = strconv.FormatFloat(a/1e3, 'f', 1, 64) + "k"
	default:
		s = strconv.FormatFloat(a/1e6, 'f', 1, 64) + "M"
	}
	if v < 0 {
		return "-" + s
	}
	if signed {
		return "+" + s
	}
	return s
}

// workloadName names a row's workload: namespace/pod/container when
// Kubernetes names are known, else its cgroup path shortened.
func workloadName(w report.Workload) string {
	if w.Namespace != "" || w.Pod != "" {
		parts := make([]string, 0, 3)
		for _, p := range []string{w.Namespace, w.Pod, w.Container} {
			if p != "" {
				parts = append(parts, p)
			}
		}
		return strings.Join(parts, "/")
	}
	return shortCgroup(w.Cgroup)
}

// fitWorkload is workloadName cut to n cells: a Kubernetes name keeps its
// namespace and container and cuts the pod's name (its end is a hash:
// shop/api-7d9f…/server), a cgroup keeps its end (…/session-3.scope).
func fitWorkload(w report.Workload, n int) string {
	name := sanitize(workloadName(w))
	if cellWidth(name) <= n {
		return name
	}
	if w.Namespace != "" || w.Pod != "" {
		if w.Namespace != "" && w.Pod != "" && w.Container != "" {
			ns, ctr := sanitize(w.Namespace), sanitize(w.Container)
			if room := n - cellWidth(ns) - cellWidth(ctr) - 2; room >= 4 {
				return ns + "/" + truncEnd(sanitize(w.Pod), room) + "/" + ctr
			}
		}
		return truncMiddle(name, n)
	}
	if n < 2 {
		return truncEnd(name, n)
	}
	return "…" + ansi.TruncateLeft(name, cellWidth(name)-(n-1), "")
}

// containerScopes are the prefixes container runtimes give the systemd
// scope of a container; the scope is shown as runtime:id (12 hex digits).
var containerScopes = []struct{ prefix, name string }{
	{"cri-containerd-", "containerd"},
	{"docker-", "docker"},
	{"crio-", "crio"},
	{"libpod-", "podman"},
}

// shortCgroup shortens a cgroup path for a column: a systemd unit keeps its
// name (/system.slice/nginx.service: nginx.service), a container scope
// becomes runtime:id, a user session keeps its user (user-1000/session-3),
// a Kubernetes pod slice without names keeps its pod UID; other paths keep
// their last two components.
func shortCgroup(path string) string {
	p := strings.Trim(path, "/")
	if p == "" {
		if path == "" {
			return "?"
		}
		return "/"
	}
	parts := strings.Split(p, "/")
	last := parts[len(parts)-1]
	for _, cs := range containerScopes {
		if id, ok := strings.CutPrefix(last, cs.prefix); ok {
			id = strings.TrimSuffix(id, ".scope")
			if len(id) > 12 {
				id = id[:12]
			}
			// A pod slice above names the pod (its UID) when the names
			// are unknown.
			if len(parts) > 1 {
				if pod := podSlice(parts[len(parts)-2]); pod != "" {
					return "pod " + pod + " " + cs.name + ":" + id
				}
			}
			return cs.name + ":" + id
		}
	}
	if pod := podSlice(last); pod != "" {
		return "pod " + pod
	}
	if strings.HasSuffix(last, ".service") || strings.HasSuffix(last, ".socket") {
		return last
	}
	if len(parts) > 1 {
		parent := strings.TrimSuffix(parts[len(parts)-2], ".slice")
		return parent + "/" + last
	}
	return last
}

// podSlice returns the (shortened) pod UID of a kubelet pod slice
// (kubepods-burstable-pod<uid>.slice), else "".
func podSlice(s string) string {
	i := strings.LastIndex(s, "-pod")
	if i < 0 || !strings.HasPrefix(s, "kubepods") {
		return ""
	}
	uid := strings.TrimSuffix(s[i+len("-pod"):], ".slice")
	uid = strings.ReplaceAll(uid, "_", "-")
	if len(uid) > 8 {
		uid = uid[:8]
	}
	return uid
}

// shortDir is the DIR column: in, out, or the direction as is.
func shortDir(d string) string {
	switch d {
	case "inbound":
		return "in"
	case "outbound":
		return "out"
	}
	return d
}

// fmtOldest is the OLDEST column: > marks a lower bound (the socket
// predates tcptrace).
func fmtOldest(r *report.Row) string {
	if r.OldestAge <= 0 {
		return "-"
	}
	if !r.OldestAgeKnown {
		return ">" + fmtDur(r.OldestAge)
	}
	return fmtDur(r.OldestAge)
}

// fmtFDs formats a holder's descriptor use: open/limit, ? for an unknown
// part, - when both are unknown.
func fmtFDs(h report.Holder) string {
	if h.OpenFDs == 0 && h.FDLimit == 0 {
		return "-"
	}
	open, limit := "?", "?"
	if h.OpenFDs > 0 {
		open = strconv.Itoa(h.OpenFDs)
	}
	if h.FDLimit > 0 {
		limit = strconv.Itoa(h.FDLimit)
	}
	return open + "/" + limit
}

// fmtExhaust is the EXHAUST column: exhausted (a holder's accept() has
// failed for want of a descriptor), never, now (a holder is at its
// limit), the forecast, or - when there is none (no holder with a known
// limit).
func fmtExhaust(r *report.Row) string {
	if r.Exhausted {
		return "exhausted"
	}
	if r.ExhaustionNever {
		return "never"
	}
	for _, h := range r.Holders {
		if h.FDLimit > 0 && h.OpenFDs >= h.FDLimit {
			return "now"
		}
	}
	if r.Exhaustion <= 0 {
		return "-"
	}
	return fmtDur(r.Exhaustion)
}

// fmtHolder is pid/comm.
func fmtHolder(h report.Holder) string {
	return strconv.Itoa(h.PID) + "/" + h.Comm
}

// fmtHolders is the HOLDERS column: the first two holders, +N for more.
func fmtHolders(hs []report.Holder) string {
	if len(hs) == 0 {
		return "-"
	}
	var b strings.Builder
	for i, h := range hs {
		if i == 2 {
			fmt.Fprintf(&b, " +%d", len(hs)-2)
			break
		}
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(fmtHolder(h))
	}
	return b.String()
}

// bucketLabel labels histogram bucket i by its bound: "≤ 4.1ms", or
// "> 9h32m" for the last, unbounded one.
func bucketLabel(i int) string {
	if i >= events.HistBuckets-1 {
		return "> " + fmtDur(lastBucketLow)
	}
	return "≤ " + fmtBound(events.HistUpperBound(i))
}

// fmtBound formats a bucket bound (a power of two µs) with one more digit
// below a second than fmtDur, so that neighbouring bounds differ: 2µs …
// 512µs, 1.0ms, 2.0ms, 4.1ms, … 524ms, 1.0s, … then fmtDur.
func fmtBound(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmtDur(d)
	case d < 10*time.Millisecond:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
	case d < time.Second:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 0, 64) + "ms"
	}
	return fmtDur(d)
}

// sanitize drops control characters (a comm or a cgroup name could carry
// an escape sequence onto the terminal).
func sanitize(s string) string {
	clean := true
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

// cellWidth is the display width of plain text.
func cellWidth(s string) int { return ansi.StringWidth(s) }

// truncEnd cuts plain text to n cells, ending it with … when cut.
func truncEnd(s string, n int) string {
	if cellWidth(s) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	return ansi.Truncate(s, n, "…")
}

// truncMiddle cuts plain text to n cells in its middle, so that both the
// namespace and the container of a workload stay: default/web-7…/nginx.
func truncMiddle(s string, n int) string {
	w := cellWidth(s)
	if w <= n {
		return s
	}
	if n < 5 {
		return truncEnd(s, n)
	}
	tail := (n - 1) / 2
	head := n - 1 - tail
	return ansi.Truncate(s, head, "") + "…" + ansi.TruncateLeft(s, w-tail, "")
}

// pad pads plain text to n cells, on the left when right is set.
func pad(s string, n int, right bool) string {
	w := cellWidth(s)
	if w >= n {
		return s
	}
	if right {
		return strings.Repeat(" ", n-w) + s
	}
	return s + strings.Repeat(" ", n-w)
}
