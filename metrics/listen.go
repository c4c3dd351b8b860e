package metrics

import (
	"cmp"
	"iter"
	"maps"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcptrace/tcptrace/events"
)

// Listeners lists the listening sockets by network namespace (the
// tracer), for the accept-queue metrics. A Source that has it gets them.
type Listeners interface {
	Listening() (map[uint32][]events.Listener, error)
}

// AcceptFailures visits the accept() failures the kernel counted (the
// tracer). A Source that has it gets tcptrace_accept_failures_total.
type AcceptFailures interface {
	AcceptFailures(fn func(events.AcceptFailure)) error
}

var acceptLabels = []string{"namespace", "pod", "container", "cgroup", "port", "reason"}

var listenLabels = []string{"namespace", "pod", "container", "cgroup", "port"}

var (
	infoListenQueue = Info{"listen_queue_length", "gauge",
		"Connections in listening sockets' accept queues now, waiting for the application to accept them; by the listener's workload (the cgroup that created it) and port.", listenLabels}
	infoListenLimit = Info{"listen_queue_limit", "gauge",
		"The accept queues' limit (the listen backlog, capped by net.core.somaxconn); the kernel admits one more than this before it drops.", listenLabels}
	infoListenDrops = Info{"listen_drops_total", "counter",
		"Connections listening sockets dropped because their accept queue or SYN queue was full (the kernel's ListenDrops, per listener). Resets when the listener is closed.", listenLabels}
)

var infoAcceptFailures = Info{"accept_failures_total", "counter",
	"accept() calls on a listener that failed for want of a file descriptor: reason emfile, the process is at its RLIMIT_NOFILE (a descriptor leak's end); enfile, the system's file table is full. By the listener's workload and port.", acceptLabels}

// listenSeries is one listener label set; the listeners of one workload
// and port (IPv4 and IPv6, SO_REUSEPORT groups) are summed.
type listenSeries struct {
	Workload
	port uint16
}

type listenSum struct {
	queue, limit, drops uint64
}

func (s *listenSum) add(o listenSum) {
	s.queue += o.queue
	s.limit += o.limit
	s.drops += o.drops
}

// collectListeners sends the accept-queue metrics of every listener the
// source lists, read now (a sock_diag dump per network namespace). Label
// sets past the series cap are folded into "other", in a stable order
// (by port, then workload) so that the same ones fold each scrape.
// Callers hold mu.
func (c *Collector) collectListeners(ch chan<- prometheus.Metric) {
	ls, ok := c.src.(Listeners)
	if !ok {
		return
	}
	byNS, err := ls.Listening()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.listenQueue, err)
	}
	sums := make(map[listenSeries]*listenSum)
	for _, list := range byNS {
		for _, l := range list {
			w, _ := c.namer.Workload(l.CgroupID)
			k := listenSeries{w, l.Local.Port()}
			s := sums[k]
			if s == nil {
				s = &listenSum{}
				sums[k] = s
			}
			s.add(listenSum{uint64(l.Queue), uint64(l.Backlog), l.Drops})
		}
	}
	own, folded := capped(maps.Keys(sums), func(a, b listenSeries) int {
		return cmp.Or(cmp.Compare(a.port, b.port), compareWorkloads(a.Workload, b.Workload))
	}, c.cfg.MaxSeries)
	for _, k := range own {
		c.sendListen(ch, sums[k], k.Namespace, k.Pod, k.Container, k.Cgroup, strconv.Itoa(int(k.port)))
	}
	if len(folded) > 0 {
		other := &listenSum{}
		for _, k := range folded {
			other.add(*sums[k])
		}
		c.sendListen(ch, other, Other, Other, Other, Other, Other)
	}
}

// capped orders label sets by compare (stable across scrapes) and splits
// them at the series cap: the first have series of their own, the rest
// are folded into "other".
func capped[K any](keys iter.Seq[K], compare func(a, b K) int, maxSeries int) (own, folded []K) {
	sorted := slices.SortedFunc(keys, compare)
	n := min(len(sorted), maxSeries)
	return sorted[:n], sorted[n:]
}

func compareWorkloads(a, b Workload) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Pod, b.Pod),
		cmp.Compare(a.Container, b.Container), cmp.Compare(a.Cgroup, b.Cgroup))
}

func (c *Collector) sendListen(ch chan<- prometheus.Metric, s *listenSum, lv ...string) {
	ch <- prometheus.MustNewConstMetric(c.listenQueue, prometheus.GaugeValue, float64(s.queue), lv...)
	ch <- prometheus.MustNewConstMetric(c.listenLimit, prometheus.GaugeValue, float64(s.limit), lv...)
	ch <- prometheus.MustNewConstMetric(c.listenDrops, prometheus.CounterValue, float64(s.drops), lv...)
}

type acceptSeries struct {
	Workload
	port   uint16
	reason string
}

// collectAcceptFailures sends the kernel's accept() failure counts, summed
// by workload, port and reason (the kernel keeps them per process), in a
// stable order under the series cap. Callers hold mu.
func (c *Collector) collectAcceptFailures(ch chan<- prometheus.Metric) {
	af, ok := c.src.(AcceptFailures)
	if !ok {
		return
	}
	sums := make(map[acceptSeries]uint64)
	err := af.AcceptFailures(func(f events.AcceptFailure) {
		w, _ := c.namer.Workload(f.CgroupID)
		sums[acceptSeries{w, f.Port, f.Reason}] += f.Count
	})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.acceptFailures, err)
		return
	}
	own, folded := capped(maps.Keys(sums), func(a, b acceptSeries) int {
		return cmp.Or(cmp.Compare(a.port, b.port), cmp.Compare(a.reason, b.reason), compareWorkloads(a.Workload, b.Workload))
	}, c.cfg.MaxSeries)
	for _, k := range own {
		ch <- prometheus.MustNewConstMetric(c.acceptFailures, prometheus.CounterValue, float64(sums[k]),
			k.Namespace, k.Pod, k.Container, k.Cgroup, strconv.Itoa(int(k.port)), k.reason)
	}
	var other uint64
	for _, k := range folded {
		other += sums[k]
	}
	if len(folded) > 0 {
		ch <- prometheus.MustNewConstMetric(c.acceptFailures, prometheus.CounterValue, float64(other), Other, Other, Other, Other, Other, Other)
	}
}
