// Package metrics exposes tcptrace's counts to Prometheus. Nearly all of
// it is read at scrape time from the kernel's aggregates and the tracker,
// so healthy traffic costs nothing here: no per-socket work, no per-event
// metric updates. The one exception, stuck reports, comes through the
// pipeline as a sink (see Collector.Write).
//
// Series are keyed by workload (Kubernetes namespace, pod and container
// when known, otherwise the cgroup path), service port and direction. Their
// number is capped (Config.MaxSeries): label sets past the cap are folded
// into one series whose labels all say "other", and counted. The series of
// a workload whose cgroup is gone (a deleted pod, a stopped unit) are
// dropped after a grace period, together with its kernel aggregates, so
// memory does not grow with pod churn.
package metrics

import (
	"iter"
	"maps"
	"math"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/track"
)

// Namespace prefixes every metric name.
const Namespace = "tcptrace"

// Other is the value of every label of the series that overflow is folded
// into.
const Other = "other"

// Workload is what a socket's cgroup is, as labels: Kubernetes names, or
// the cgroup path on a plain host (the systemd unit).
type Workload struct {
	Namespace, Pod, Container, Cgroup string
}

// Namer names the workload of a cgroup v2 id. alive is false once the
// cgroup is known to be gone. It is called from scrapes and the event
// loop at once: it must be safe for concurrent use.
type Namer interface {
	Workload(cgroupID uint64) (w Workload, alive bool)
}

// Source is where the kernel's counts come from (the tracer).
type Source interface {
	Aggregates(fn func(a *events.Aggregate)) error
	// DeleteAggregates removes the kernel aggregates of the given keys.
	DeleteAggregates(keys []events.AggregateKey) error
	AggregateOverflows() (uint64, error)
}

// Sockets iterates over the sockets user space tracks (a track.Tracker).
type Sockets interface {
	All() iter.Seq[track.Info]
}

// Config sets up a Collector.
type Config struct {
	// MaxSeries caps the distinct (workload, port, direction) label sets;
	// the rest are folded into one "other" series. Default 2000.
	MaxSeries int
	// Grace is how long the series of a workload whose cgroup is gone are
	// kept (late scrapes still see its final counts). Default 5m.
	Grace time.Duration
	// Version and Hook are reported as info metrics.
	Version, Hook string
	// Lost returns the cumulative drop counts by cause (nil: none shown).
	Lost func() events.LostCounts
}

// DefaultMaxSeries and DefaultGrace are Config's defaults.
const (
	DefaultMaxSeries = 2000
	DefaultGrace     = 5 * time.Minute
)

// series is one label set: a workload, a service port and a direction.
type series struct {
	Workload
	port, dir string
}

func (s *series) values() []string {
	return []string{s.Namespace, s.Pod, s.Container, s.Cgroup, s.port, s.dir}
}

var otherSeries = series{Workload{Other, Other, Other, Other}, Other, Other}

var seriesLabels = []string{"namespace", "pod", "container", "cgroup", "port", "direction"}

// Info describes one metric: the catalog (Catalog) that the collectors
// are made from, and that docs/metrics.md is generated from.
type Info struct {
	Name   string // without the namespace
	Type   string // counter, gauge or histogram
	Help   string
	Labels []string
}

// FullName is the metric's name with the namespace.
func (i Info) FullName() string { return Namespace + "_" + i.Name }

func (i Info) desc() *prometheus.Desc {
	return prometheus.NewDesc(i.FullName(), i.Help, i.Labels, nil)
}

var stuckLabels = append(append([]string{}, seriesLabels...), "comm")

var (
	infoCloseWait = Info{"close_wait_sockets", "gauge", "Sockets in CLOSE-WAIT now: the peer closed, the application has not.", seriesLabels}
	infoEntered   = Info{"close_wait_entered_total", "counter", "Sockets that entered CLOSE-WAIT (the peer's FIN arrived), and those found in it at start-up.", seriesLabels}
	infoClosed    = Info{"close_wait_closed_total", "counter", "Sockets in CLOSE-WAIT that the application closed or shut down.", seriesLabels}
	infoAborted   = Info{"close_wait_aborted_total", "counter", "Sockets that left CLOSE-WAIT without the application closing them: reset, timeout, destroyed.", seriesLabels}
	infoOldest    = Info{"close_wait_oldest_seconds", "gauge",
		"Age of the oldest socket in CLOSE-WAIT; younger than the stuck threshold it may read 0 (closewait tracks sockets from the threshold on, with --all from the FIN): alert on it with a bound above the threshold. A socket found at start-up counts from then, a lower bound.", seriesLabels}
	infoLatency = Info{"fin_to_close_seconds", "histogram",
		"Time from the peer's FIN to the application's close, from the kernel's log2 histogram (sockets whose FIN tcptrace saw).", seriesLabels}
	infoStuck = Info{"stuck_sockets", "gauge",
		"Sockets in CLOSE-WAIT past the threshold now, by the command name of their first holder (empty: unresolved).", stuckLabels}
	infoStuckReported = Info{"stuck_reported_total", "counter", "Stuck reports made (with --repeat, one per report).", seriesLabels}
	infoDestroyed     = Info{"destroyed_total", "counter",
		"Sockets in CLOSE-WAIT that closewait --destroy-after destroyed (self-healing); absent without it.", seriesLabels}
	infoLost      = Info{"events_lost_total", "counter", "Events dropped, by cause (see docs/events.md: every drop is counted).", []string{"cause"}}
	infoOverflows = Info{"kernel_aggregate_overflows_total", "counter", "Sockets counted in the kernel's overflow aggregate because its table was full (--max-aggregates).", nil}
	infoBuild     = Info{"build_info", "gauge", "tcptrace's version, and the Go version that built it.", []string{"version", "goversion"}}
	infoHook      = Info{"hook_info", "gauge", "The kernel hook tcptrace attached to.", []string{"hook"}}
	infoSeries    = Info{"metrics_series", "gauge", "Label sets (workload, port, direction) with series of their own.", nil}
	infoFolded    = Info{"metrics_series_folded_total", "counter",
		"Label sets folded into the series labelled \"other\" because of the series cap (--metrics-max-series).", nil}

	infoKubeSynced  = Info{"kubernetes_cache_synced", "gauge", "1 once the node's pod cache has synced with the API server, 0 before.", nil}
	infoKubeLookups = Info{"kubernetes_pod_lookups_total", "counter",
		"Pod name lookups by result: hit, deleted (a pod deleted within the grace period), not_found.", []string{"result"}}
	infoKubeCached = Info{"kubernetes_cached_pods", "gauge", "Pods of this node in the cache: live, or deleted and kept for --deleted-grace.", []string{"state"}}
)

// Catalog lists every tcptrace_* metric tcptrace serves, in the order of
// the reference. The Kubernetes ones come with Kubernetes enrichment on.
func Catalog() []Info {
	return []Info{
		infoCloseWait, infoOldest, infoEntered, infoClosed, infoAborted, infoLatency,
		infoStuck, infoStuckReported, infoDestroyed,
		infoListenQueue, infoListenLimit, infoListenDrops, infoAcceptFailures,
		infoLost, infoOverflows, infoBuild, infoHook, infoSeries, infoFolded,
		infoKubeSynced, infoKubeLookups, infoKubeCached,
	}
}

// KubeStats is what the Kubernetes metrics count (kube.Stats, as the
// wiring converts it).
type KubeStats struct {
	Hits, Deleted, NotFound uint64 // lookups by result
	LivePods, DeletedPods   int    // cached pods
}

// KubeCollector serves the pod cache's metrics: synced says whether the
// cache has synced, stats reads its counters.
type KubeCollector struct {
	synced func() bool
	stats  func() KubeStats
	descs  [3]*prometheus.Desc
}

// NewKubeCollector returns the pod cache's collector.
func NewKubeCollector(synced func() bool, stats func() KubeStats) *KubeCollector {
	return &KubeCollector{synced: synced, stats: stats,
		descs: [3]*prometheus.Desc{infoKubeSynced.desc(), infoKubeLookups.desc(), infoKubeCached.desc()}}
}

// Describe sends the three descriptors.
func (k *KubeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range k.descs {
		ch <- d
	}
}

// Collect reads the cache's state.
func (k *KubeCollector) Collect(ch chan<- prometheus.Metric) {
	synced := 0.0
	if k.synced() {
		synced = 1
	}
	st := k.stats()
	ch <- prometheus.MustNewConstMetric(k.descs[0], prometheus.GaugeValue, synced)
	ch <- prometheus.MustNewConstMetric(k.descs[1], prometheus.CounterValue, float64(st.Hits), "hit")
	ch <- prometheus.MustNewConstMetric(k.descs[1], prometheus.CounterValue, float64(st.Deleted), "deleted")
	ch <- prometheus.MustNewConstMetric(k.descs[1], prometheus.CounterValue, float64(st.NotFound), "not_found")
	ch <- prometheus.MustNewConstMetric(k.descs[2], prometheus.GaugeValue, float64(st.LivePods), "live")
	ch <- prometheus.MustNewConstMetric(k.descs[2], prometheus.GaugeValue, float64(st.DeletedPods), "deleted")
}

// Collector is a prometheus.Collector and a pipeline sink.
type Collector struct {
	cfg   Config
	src   Source
	namer Namer
	now   func() time.Time
	// bootNow is CLOCK_BOOTTIME, the clock of the sockets' FIN times.
	bootNow func() int64

	closeWait, oldest, entered, closed, aborted, latency *prometheus.Desc
	stuck, stuckReported, lost, overflows                *prometheus.Desc
	buildInfo, hookInfo, seriesNow, folded               *prometheus.Desc
	listenQueue, listenLimit, listenDrops                *prometheus.Desc
	acceptFailures, destroyedDesc                        *prometheus.Desc

	mu      sync.Mutex
	sockets Sockets
	// admitted holds the label sets with series of their own.
	admitted map[series]struct{}
	// foldedSets holds the label sets folded into "other", and
	// foldedTotal counts them since start.
	foldedSets  map[series]struct{}
	foldedTotal uint64
	// Stuck reports by aggregate key, under their own lock.
	reportsMu sync.Mutex
	reports   map[events.AggregateKey]uint64
	// Sockets closewait --destroy-after destroyed, by aggregate key.
	destroyed map[events.AggregateKey]uint64
	// deadSince says when a cgroup was first found gone.
	deadSince map[uint64]time.Time
}

// New returns a Collector; register it with a prometheus.Registry.
func New(cfg Config, src Source, namer Namer) *Collector {
	if cfg.MaxSeries <= 0 {
		cfg.MaxSeries = DefaultMaxSeries
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	return &Collector{
		cfg: cfg, src: src, namer: namer, now: time.Now, bootNow: bootclock.Now,
		closeWait:      infoCloseWait.desc(),
		oldest:         infoOldest.desc(),
		entered:        infoEntered.desc(),
		closed:         infoClosed.desc(),
		aborted:        infoAborted.desc(),
		latency:        infoLatency.desc(),
		stuck:          infoStuck.desc(),
		stuckReported:  infoStuckReported.desc(),
		lost:           infoLost.desc(),
		overflows:      infoOverflows.desc(),
		buildInfo:      infoBuild.desc(),
		hookInfo:       infoHook.desc(),
		seriesNow:      infoSeries.desc(),
		folded:         infoFolded.desc(),
		listenQueue:    infoListenQueue.desc(),
		listenLimit:    infoListenLimit.desc(),
		listenDrops:    infoListenDrops.desc(),
		acceptFailures: infoAcceptFailures.desc(),
		admitted:       make(map[series]struct{}),
		foldedSets:     make(map[series]struct{}),
		reports:        make(map[events.AggregateKey]uint64),
		destroyed:      make(map[events.AggregateKey]uint64),
		destroyedDesc:  infoDestroyed.desc(),
		deadSince:      make(map[uint64]time.Time),
	}
}

// SetSockets gives the collector the tracker, for the stuck gauges; until
// then they are absent.
func (c *Collector) SetSockets(s Sockets) {
	c.mu.Lock()
	c.sockets = s
	c.mu.Unlock()
}

// Describe sends nothing: the metrics are unchecked, since their label
// sets are known only at scrape time.
func (c *Collector) Describe(chan<- *prometheus.Desc) {}

// Write counts stuck reports (a pipeline sink). It takes only a lock of
// its own, never the scrape's: the event loop does not wait for a scrape.
// Reports are kept by aggregate key and named at scrape time.
func (c *Collector) Write(ev *events.Event) error {
	if ev.Kind != events.KindStuck && ev.Kind != events.KindDestroyed {
		return nil
	}
	k := events.AggregateKey{CgroupID: ev.CgroupID, Port: ev.LocalPort, Dir: ev.Dir}
	if ev.Dir == events.DirOutbound {
		k.Port = ev.RemotePort
	}
	c.reportsMu.Lock()
	if ev.Kind == events.KindStuck {
		c.reports[k]++
	} else {
		c.destroyed[k]++
	}
	c.reportsMu.Unlock()
	return nil
}

// Flush does nothing (a pipeline sink).
func (c *Collector) Flush() error { return nil }

func (c *Collector) key(w Workload, dir events.Direction, local, remote uint16) series {
	port := local
	if dir == events.DirOutbound {
		port = remote
	}
	d := dir.String()
	if dir != events.DirInbound && dir != events.DirOutbound {
		d = "unknown"
	}
	return series{Workload: w, port: strconv.Itoa(int(port)), dir: d}
}

// admit returns s if it has (or now gets) a series of its own, otherwise
// the "other" series. Callers hold mu.
func (c *Collector) admit(s series) series {
	if s == otherSeries {
		return s
	}
	if _, ok := c.admitted[s]; ok {
		return s
	}
	if len(c.admitted) < c.cfg.MaxSeries {
		c.admitted[s] = struct{}{}
		delete(c.foldedSets, s)
		return s
	}
	if _, ok := c.foldedSets[s]; !ok {
		c.foldedSets[s] = struct{}{}
		c.foldedTotal++
	}
	return otherSeries
}

// agg sums the kernel aggregates of one label set.
type agg struct {
	entered, closed, aborted, reports uint64
	destroyed                         uint64 // by the self-healing policy
	hist                              [events.HistBuckets]uint64
	sum                               time.Duration
}

// Prune drops the series and kernel aggregates of workloads gone for the
// grace period, as a scrape does: call it periodically so that the
// kernel's table does not fill with pod churn when nobody scrapes.
func (c *Collector) Prune() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.walk(c.now())
	return err
}

// Collect reads the kernel's aggregates and the tracker. Concurrent
// scrapes take turns.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	byLabels, aggErr := c.walk(c.now())
	var oldest map[series]float64
	if c.sockets != nil {
		oldest = c.collectStuck(ch)
	}
	for s, v := range byLabels {
		lv := s.values()
		inCW := uint64(0)
		if left := v.closed + v.aborted; left < v.entered {
			inCW = v.entered - left
		}
		ch <- prometheus.MustNewConstMetric(c.closeWait, prometheus.GaugeValue, float64(inCW), lv...)
		if oldest != nil && inCW > 0 {
			ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, oldest[s], lv...)
		}
		ch <- prometheus.MustNewConstMetric(c.entered, prometheus.CounterValue, float64(v.entered), lv...)
		ch <- prometheus.MustNewConstMetric(c.closed, prometheus.CounterValue, float64(v.closed), lv...)
		ch <- prometheus.MustNewConstMetric(c.aborted, prometheus.CounterValue, float64(v.aborted), lv...)
		ch <- histogram(c.latency, &v.hist, v.sum, lv)
		ch <- prometheus.MustNewConstMetric(c.stuckReported, prometheus.CounterValue, float64(v.reports), lv...)
		if v.destroyed > 0 {
			ch <- prometheus.MustNewConstMetric(c.destroyedDesc, prometheus.CounterValue, float64(v.destroyed), lv...)
		}
	}
	c.collectListeners(ch)
	c.collectAcceptFailures(ch)
	if c.cfg.Lost != nil {
		for cause, n := range c.cfg.Lost() {
			ch <- prometheus.MustNewConstMetric(c.lost, prometheus.CounterValue, float64(n), events.LostCause(cause).String())
		}
	}
	if c.src != nil {
		if n, err := c.src.AggregateOverflows(); err == nil {
			ch <- prometheus.MustNewConstMetric(c.overflows, prometheus.CounterValue, float64(n))
		}
	}
	if aggErr != nil {
		ch <- prometheus.NewInvalidMetric(c.closeWait, aggErr)
	}
	ch <- prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1, c.cfg.Version, goVersion())
	if c.cfg.Hook != "" {
		ch <- prometheus.MustNewConstMetric(c.hookInfo, prometheus.GaugeValue, 1, c.cfg.Hook)
	}
	ch <- prometheus.MustNewConstMetric(c.seriesNow, prometheus.GaugeValue, float64(len(c.admitted)))
	ch <- prometheus.MustNewConstMetric(c.folded, prometheus.CounterValue, float64(c.foldedTotal))
}

// walk reads the kernel's aggregates by label set, drops those of
// workloads gone for the grace period and forgets label sets with no
// aggregate left. Callers hold mu.
func (c *Collector) walk(now time.Time) (map[series]*agg, error) {
	byLabels := make(map[series]*agg)
	seen := make(map[series]struct{}, len(c.admitted))
	var dead []events.AggregateKey
	if c.src == nil {
		return byLabels, nil
	}
	c.reportsMu.Lock()
	reports := maps.Clone(c.reports)
	destroyed := maps.Clone(c.destroyed)
	c.reportsMu.Unlock()
	aggErr := c.src.Aggregates(func(a *events.Aggregate) {
		var s series
		if a.Dir == events.DirOverflow {
			s = otherSeries
		} else {
			w, alive := c.namer.Workload(a.CgroupID)
			if c.expired(a, alive, now) {
				dead = append(dead, a.AggregateKey)
				return
			}
			s = c.key(w, a.Dir, a.Port, a.Port)
		}
		s = c.admit(s)
		seen[s] = struct{}{}
		v := byLabels[s]
		if v == nil {
			v = &agg{}
			byLabels[s] = v
		}
		v.reports += reports[a.AggregateKey]
		v.destroyed += destroyed[a.AggregateKey]
		v.entered += a.Entered
		v.closed += a.Closed
		v.aborted += a.Aborted
		v.sum += a.Sum
		for i, n := range a.Hist {
			v.hist[i] += n
		}
	})
	if aggErr == nil {
		if len(dead) > 0 && c.src.DeleteAggregates(dead) == nil {
			c.reportsMu.Lock()
			for _, k := range dead {
				delete(c.deadSince, k.CgroupID)
				delete(c.reports, k)
				delete(c.destroyed, k)
			}
			c.reportsMu.Unlock()
		}
		// A label set with no aggregate left has nothing more to say.
		for s := range c.admitted {
			if _, ok := seen[s]; !ok {
				delete(c.admitted, s)
			}
		}
		for s := range c.foldedSets {
			if _, ok := seen[s]; !ok {
				delete(c.foldedSets, s)
			}
		}
	}
	return byLabels, aggErr
}

// expired says whether an aggregate belongs to a cgroup that has been gone
// for the grace period, with none of its sockets left in CLOSE-WAIT.
// Callers hold mu.
func (c *Collector) expired(a *events.Aggregate, alive bool, now time.Time) bool {
	if alive || a.CgroupID == 0 {
		delete(c.deadSince, a.CgroupID)
		return false
	}
	since, ok := c.deadSince[a.CgroupID]
	if !ok {
		c.deadSince[a.CgroupID] = now
		return false
	}
	return now.Sub(since) >= c.cfg.Grace && a.InCloseWait() == 0
}

// Classic buckets: the kernel's log2 µs bucket bounds from about 1 ms
// (2^10 µs) to about 1.2 h (2^32 µs), so no interpolation is needed.
const (
	firstClassicBound = 10
	lastClassicBound  = 32
)

// nativeOffset maps kernel bucket i, [2^i, 2^(i+1)) µs, to the native
// (schema 0) bucket i-19, (2^(i-20), 2^(i-19)] s: (0.954·2^i, 1.907·2^i] µs.
// The bounds are 4.6 % below the kernel's, the closest powers of two can
// be: a µs is not a power of two of a second.
const nativeOffset = -19

// histogram builds one histogram with both classic buckets and native
// (sparse, schema 0) buckets: a server that accepts native histograms
// negotiates the protobuf format and gets both, the text format shows the
// classic ones. Built directly, without client_golang's const histograms,
// which sort a map of bounds per series: a scrape of thousands of series
// spends its time there.
func histogram(desc *prometheus.Desc, hist *[events.HistBuckets]uint64, sum time.Duration, lv []string) prometheus.Metric {
	var count uint64
	for _, n := range hist {
		count += n
	}
	h := &histMetric{desc: desc, labels: prometheus.MakeLabelPairs(desc, lv)}
	buckets := make([]dto.Bucket, lastClassicBound-firstClassicBound+1)
	h.h.Bucket = make([]*dto.Bucket, len(buckets))
	var cum uint64
	next := 0
	for k := firstClassicBound; k <= lastClassicBound; k++ {
		// Bucket i's upper bound is 2^(i+1) µs: it is under le=2^k µs when i < k.
		for ; next < k && next < events.HistBuckets; next++ {
			cum += hist[next]
		}
		b := &buckets[k-firstClassicBound]
		b.CumulativeCount = proto.Uint64(cum)
		b.UpperBound = proto.Float64(math.Ldexp(1e-6, k))
		h.h.Bucket[k-firstClassicBound] = b
	}
	h.h.SampleCount = proto.Uint64(count)
	h.h.SampleSum = proto.Float64(sum.Seconds())
	h.h.Schema = proto.Int32(0)
	h.h.ZeroThreshold = proto.Float64(0)
	h.h.ZeroCount = proto.Uint64(0)
	// One span from the first to the last bucket in use; the counts are
	// delta-encoded, empty buckets inside the span included.
	first, last := -1, -1
	for i, n := range hist {
		if n > 0 {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 {
		h.h.PositiveSpan = []*dto.BucketSpan{{Offset: proto.Int32(0), Length: proto.Uint32(0)}}
		return h
	}
	h.h.PositiveSpan = []*dto.BucketSpan{{Offset: proto.Int32(int32(first + nativeOffset)), Length: proto.Uint32(uint32(last - first + 1))}}
	h.h.PositiveDelta = make([]int64, 0, last-first+1)
	prev := int64(0)
	for i := first; i <= last; i++ {
		h.h.PositiveDelta = append(h.h.PositiveDelta, int64(hist[i])-prev)
		prev = int64(hist[i])
	}
	return h
}

// histMetric is a histogram made for one scrape.
type histMetric struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair
	h      dto.Histogram
}

func (m *histMetric) Desc() *prometheus.Desc { return m.desc }

func (m *histMetric) Write(out *dto.Metric) error {
	out.Histogram = &m.h
	out.Label = m.labels
	return nil
}

// collectStuck counts the stuck sockets by label set and holder, and
// returns the age in seconds of each label set's oldest tracked socket
// (the tracker holds those past the threshold, and in --all every one).
// The tracker's lock is held only for the walk: workloads are named after
// it.
func (c *Collector) collectStuck(ch chan<- prometheus.Metric) map[series]float64 {
	type rawKey struct {
		cgroupID      uint64
		dir           events.Direction
		local, remote uint16
		comm          string
	}
	raw := make(map[rawKey]int)
	firstFin := make(map[rawKey]int64) // by key without comm
	for info := range c.sockets.All() {
		k := rawKey{cgroupID: info.CgroupID, dir: info.Dir, local: info.LocalPort, remote: info.RemotePort}
		if k.dir == events.DirOutbound {
			k.local = 0 // the ephemeral port: not part of the series
		} else {
			k.remote = 0
		}
		if fin, ok := firstFin[k]; !ok || info.FinBootNS < fin {
			firstFin[k] = info.FinBootNS
		}
		if !info.Stuck {
			continue
		}
		if len(info.Owners) > 0 {
			k.comm = info.Owners[0].Comm
		}
		raw[k]++
	}
	now := c.bootNow()
	oldest := make(map[series]float64, len(firstFin))
	for k, fin := range firstFin {
		w, _ := c.namer.Workload(k.cgroupID)
		s := c.admit(c.key(w, k.dir, k.local, k.remote))
		oldest[s] = max(oldest[s], time.Duration(max(now-fin, 0)).Seconds())
	}
	type stuckKey struct {
		series
		comm string
	}
	stuck := make(map[stuckKey]int)
	for k, n := range raw {
		w, _ := c.namer.Workload(k.cgroupID)
		sk := stuckKey{series: c.admit(c.key(w, k.dir, k.local, k.remote)), comm: k.comm}
		if sk.series == otherSeries {
			sk.comm = Other
		}
		stuck[sk] += n
	}
	for k, n := range stuck {
		ch <- prometheus.MustNewConstMetric(c.stuck, prometheus.GaugeValue, float64(n), append(k.values(), k.comm)...)
	}
	return oldest
}

func goVersion() string { return runtime.Version() }
