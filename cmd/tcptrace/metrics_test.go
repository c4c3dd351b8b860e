package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsAddr starts tcptrace closewait with --listen on a free loopback
// port and returns the tracer and the base URL.
func startWithMetrics(t *testing.T, args ...string) (*tracerProc, string) {
	t.Helper()
	p := startTracer(t, append([]string{"closewait", "--listen", "127.0.0.1:0"}, args...)...)
	m := regexp.MustCompile(`msg="serving metrics" address=(\S+)`).FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no serving metrics line:\n%s", p.stderr.String())
	}
	return p, "http://" + m[1]
}

// scrape fetches /metrics and parses it with Prometheus' own text parser.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("/metrics: %s\n%s", resp.Status, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// series returns the metrics of a family whose labels include want.
func series(fams map[string]*dto.MetricFamily, name string, want map[string]string) []*dto.Metric {
	var out []*dto.Metric
	for _, m := range fams[name].GetMetric() {
		ok := true
		for k, v := range want {
			if label(m, k) != v {
				ok = false
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return -1
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// ownCgroup is this process's cgroup v2 path, as the metrics label it.
func ownCgroup(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest
		}
	}
	t.Skip("no cgroup v2 line in /proc/self/cgroup")
	return ""
}

// A scrape shows a leaking server's and a leaking client pool's sockets
// in CLOSE-WAIT, one series each (the pool's is its server port, not one
// per ephemeral port), their stuck gauges by holder, counters and a
// histogram that count every close.
func TestMetricsOfLeaks(t *testing.T) {
	cg := ownCgroup(t)
	srv := listen(t, "tcp4", "127.0.0.1:0")  // we leak what it accepts
	pool := listen(t, "tcp4", "127.0.0.1:0") // its peer closes; our clients leak
	p, base := startWithMetrics(t, "--port", portArg(srv), "--port", portArg(pool), "--threshold", "1s", "--flush-interval", "20ms")

	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d, want 200", code)
	}
	const healthy, leaked, pooled = 300, 5, 7
	healthyChurn(t, srv, healthy)
	var leaks []func(jsonEvent) bool
	leakStart := time.Now()
	for range leaked {
		c := dial(t, srv)
		if err := c.client.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		leaks = append(leaks, c.isServer)
	}
	for range pooled {
		c := dial(t, pool)
		c.server.Close() // the server closes first: our client is in CLOSE-WAIT
		leaks = append(leaks, c.isClient)
	}
	// Every leak's stuck report; a churned socket that a loaded machine
	// kept open past the threshold is rightly reported too, and counted.
	slowHealthy := 0
	for reported := map[int]bool{}; len(reported) < len(leaks); {
		ev := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" })
		found := false
		for i, isLeak := range leaks {
			if isLeak(ev) {
				reported[i], found = true, true
			}
		}
		if !found {
			slowHealthy++
			t.Logf("a churned socket closed past the threshold: %v", ev)
		}
	}

	fams := scrape(t, base)
	in := map[string]string{"port": portArg(srv), "direction": "inbound", "cgroup": cg}
	out := map[string]string{"port": portArg(pool), "direction": "outbound", "cgroup": cg}
	check := func(name string, want map[string]string, v float64) {
		t.Helper()
		got := series(fams, name, want)
		if len(got) != 1 || value(got[0]) != v {
			var vals []string
			for _, m := range got {
				vals = append(vals, fmt.Sprint(m.GetLabel(), value(m)))
			}
			t.Errorf("%s%v: %v, want one series of %v", name, want, vals, v)
		}
	}
	check("tcptrace_close_wait_sockets", in, leaked)
	check("tcptrace_close_wait_sockets", out, pooled)
	// A program run the kernel skipped (a recursion miss, counted) loses
	// one count: the healthy churn's counts lie within the misses.
	var misses float64
	if m := series(fams, "tcptrace_events_lost_total", map[string]string{"cause": "recursion_miss"}); len(m) == 1 {
		misses = value(m[0])
	}
	near := func(name string, want map[string]string, v float64) {
		t.Helper()
		got := series(fams, name, want)
		if len(got) != 1 || value(got[0]) > v || value(got[0])+misses < v {
			t.Errorf("%s%v: %v, want one series of %v (%v runs skipped)", name, want, got, v, misses)
		}
	}
	near("tcptrace_close_wait_entered_total", in, healthy+leaked)
	near("tcptrace_close_wait_closed_total", in, healthy)
	check("tcptrace_close_wait_aborted_total", in, 0)
	check("tcptrace_stuck_reported_total", in, float64(leaked+slowHealthy))
	check("tcptrace_stuck_reported_total", out, pooled)
	comm := func(want map[string]string) map[string]string {
		m := map[string]string{"comm": ownComm(t)}
		for k, v := range want {
			m[k] = v
		}
		return m
	}
	check("tcptrace_stuck_sockets", comm(in), leaked)
	check("tcptrace_stuck_sockets", comm(out), pooled)
	// The oldest: past the threshold (each was reported stuck), no older
	// than the time since the first leak was made.
	for _, want := range []map[string]string{in, out} {
		got := series(fams, "tcptrace_close_wait_oldest_seconds", want)
		if len(got) != 1 || value(got[0]) < 1 || value(got[0]) > time.Since(leakStart).Seconds() {
			t.Errorf("tcptrace_close_wait_oldest_seconds%v: %v, want one series between 1 s and %v", want, got, time.Since(leakStart))
		}
	}
	// No series names an ephemeral port: every series is one of the two
	// service ports.
	for _, m := range fams["tcptrace_close_wait_entered_total"].GetMetric() {
		if port := label(m, "port"); port != portArg(srv) && port != portArg(pool) {
			t.Errorf("series of port %s: %v", port, m.GetLabel())
		}
	}
	h := series(fams, "tcptrace_fin_to_close_seconds", in)
	if len(h) != 1 {
		t.Fatalf("fin_to_close_seconds%v: %d series, want 1", in, len(h))
	}
	hist := h[0].GetHistogram()
	if float64(hist.GetSampleCount()) > healthy || float64(hist.GetSampleCount())+misses < healthy || hist.GetSampleSum() <= 0 {
		t.Errorf("histogram count %d sum %v, want %d closes and a positive sum", hist.GetSampleCount(), hist.GetSampleSum(), healthy)
	}
	buckets := hist.GetBucket()
	if len(buckets) == 0 || buckets[0].GetUpperBound() < 0.001 || buckets[0].GetUpperBound() > 0.0011 ||
		buckets[len(buckets)-1].GetUpperBound() < 3600 {
		t.Errorf("buckets %v, want 1 ms to 1 h", buckets)
	}
	for i := 1; i < len(buckets); i++ {
		if buckets[i].GetCumulativeCount() < buckets[i-1].GetCumulativeCount() {
			t.Errorf("bucket counts not cumulative: %v", buckets)
		}
	}
	if n := buckets[len(buckets)-1].GetCumulativeCount(); n != hist.GetSampleCount() {
		t.Errorf("largest finite bucket holds %d, want all %d closes (each well under an hour)", n, healthy)
	}
	// A server that takes native histograms (the protobuf format) gets
	// native buckets too, holding the same closes.
	native := nativeHistogram(t, base, "tcptrace_fin_to_close_seconds", in)
	var inNative int64
	count := int64(0)
	for _, d := range native.GetPositiveDelta() {
		count += d
		inNative += count
	}
	if native.GetSchema() != 0 || len(native.GetPositiveSpan()) == 0 || uint64(inNative) != hist.GetSampleCount() {
		t.Errorf("native histogram schema %d spans %v holds %d, want schema 0 and the %d closes",
			native.GetSchema(), native.GetPositiveSpan(), inNative, healthy)
	}
	for _, name := range []string{"tcptrace_build_info", "tcptrace_hook_info", "tcptrace_events_lost_total"} {
		if len(fams[name].GetMetric()) == 0 {
			t.Errorf("no %s", name)
		}
	}
	if hook := label(fams["tcptrace_hook_info"].GetMetric()[0], "hook"); !strings.Contains(p.stderr.String(), "point="+hook) {
		t.Errorf("hook_info says %q; tcptrace attached:\n%s", hook, p.stderr.String())
	}
	// Ready once attached (it may flap to 503 while a loaded machine
	// stalls the ring buffer's reader: wait, do not sample once).
	for deadline := time.Now().Add(eventTimeout); ; time.Sleep(50 * time.Millisecond) {
		code, body := get(t, base+"/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("/readyz %d after attach, want 200:\n%s", code, body)
			break
		}
	}
}

func ownComm(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// /readyz is 503 from the moment tcptrace listens until the tracer is
// attached (loading and attaching the programs takes a good fraction of a
// second, far longer than a loopback request), then 200.
func TestReadyOnlyOnceAttached(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // a port that was free just now
	type answer struct {
		code int
		body string
	}
	answers := make(chan []answer, 1)
	go func() {
		var seen []answer
		defer func() { answers <- seen }()
		deadline := time.Now().Add(eventTimeout)
		for time.Now().Before(deadline) {
			resp, err := http.Get("http://" + addr + "/readyz")
			if err != nil {
				time.Sleep(time.Millisecond) // not listening yet
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			seen = append(seen, answer{resp.StatusCode, string(b)})
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}()
	p := startTracer(t, "closewait", "--listen", addr)
	seen := <-answers
	if len(seen) == 0 || seen[len(seen)-1].code != http.StatusOK {
		t.Fatalf("/readyz never 200: %v\n%s", seen, p.stderr.String())
	}
	if len(seen) < 2 {
		t.Fatalf("/readyz answered 200 at once: no 503 while attaching")
	}
	for _, a := range seen[:len(seen)-1] {
		if a.code != http.StatusServiceUnavailable || !strings.Contains(a.body, "tracer: not attached yet") {
			t.Errorf("/readyz before ready: %d %q, want 503 saying the tracer is not attached", a.code, a.body)
			break
		}
	}
	t.Logf("%d answers of 503 before the 200", len(seen)-1)
}

// Past --metrics-max-series, label sets are folded into one series whose
// labels say "other", and counted.
func TestMetricsSeriesCap(t *testing.T) {
	a := listen(t, "tcp4", "127.0.0.1:0")
	b := listen(t, "tcp4", "127.0.0.1:0")
	c := listen(t, "tcp4", "127.0.0.1:0")
	_, base := startWithMetrics(t, "--port", portArg(a), "--port", portArg(b), "--port", portArg(c),
		"--threshold", "1m", "--metrics-max-series", "1")
	for i, ln := range []*net.TCPListener{a, b, c} {
		for range i + 1 {
			conn := dial(t, ln)
			if err := conn.client.CloseWrite(); err != nil {
				t.Fatal(err)
			}
		}
	}
	var fams map[string]*dto.MetricFamily
	deadline := time.Now().Add(eventTimeout)
	for {
		fams = scrape(t, base)
		var total float64
		for _, m := range fams["tcptrace_close_wait_sockets"].GetMetric() {
			total += value(m)
		}
		if total == 6 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cw := fams["tcptrace_close_wait_sockets"].GetMetric()
	if len(cw) != 2 {
		t.Fatalf("%d series, want one of its own and other: %v", len(cw), cw)
	}
	var own, other float64
	for _, m := range cw {
		if label(m, "port") == "other" {
			if label(m, "direction") != "other" || label(m, "cgroup") != "other" || label(m, "pod") != "other" {
				t.Errorf("overflow series labelled %v, want other everywhere", m.GetLabel())
			}
			other = value(m)
		} else {
			own = value(m)
		}
	}
	if own+other != 6 || own == 0 || other == 0 {
		t.Errorf("own series %v + other %v, want 6 sockets split between them", own, other)
	}
	if f := fams["tcptrace_metrics_series_folded_total"].GetMetric(); len(f) != 1 || value(f[0]) != 2 {
		t.Errorf("series_folded_total %v, want the 2 label sets past the cap", f)
	}
	if s := fams["tcptrace_metrics_series"].GetMetric(); len(s) != 1 || value(s[0]) != 1 {
		t.Errorf("metrics_series %v, want 1", s)
	}
}

// nativeHistogram scrapes in the protobuf format, as a Prometheus server
// that takes native histograms asks, and returns one histogram.
func nativeHistogram(t *testing.T, base, name string, want map[string]string) *dto.Histogram {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
	fams := map[string]*dto.MetricFamily{}
	for {
		var f dto.MetricFamily
		if err := dec.Decode(&f); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode the protobuf scrape (%s): %v", resp.Header.Get("Content-Type"), err)
		}
		fams[f.GetName()] = &f
	}
	got := series(fams, name, want)
	if len(got) != 1 {
		t.Fatalf("protobuf scrape: %d series of %s%v, want 1", len(got), name, want)
	}
	return got[0].GetHistogram()
}

// tcptrace's own server connections are not the host's: scrapes that end
// as Prometheus' do when it drops an idle connection (the client closes
// first, so tcptrace's side passes through CLOSE-WAIT) are traced, but
// stay out of the metrics and the leak report.
func TestOwnConnectionsNotCounted(t *testing.T) {
	p, base := startWithMetrics(t, "--all", "--threshold", "1m")
	_, portStr, _ := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	var port int
	fmt.Sscan(portStr, &port)
	const n = 5
	for range n {
		c, err := net.Dial("tcp4", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: tcptrace\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.Close() // keep-alive: the server holds it until our FIN
	}
	for i := range n {
		p.next(eventTimeout, fmt.Sprintf("close %d of tcptrace's own connections", i+1), func(ev jsonEvent) bool {
			return ev.Event == "app_close" && ev.LocalPort == port
		})
	}
	fams := scrape(t, base)
	for _, name := range []string{"tcptrace_close_wait_entered_total", "tcptrace_close_wait_closed_total", "tcptrace_close_wait_sockets"} {
		for _, m := range fams[name].GetMetric() {
			if label(m, "port") == portStr && label(m, "direction") == "inbound" {
				t.Errorf("%s has a series of tcptrace's own port %s: %v", name, portStr, m.GetLabel())
			}
		}
	}
	if row := rowOf(topOnce(t, "--from", base), port); row != nil {
		t.Errorf("the report has a row of tcptrace's own port %d: %+v", port, row)
	}
}
