package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tcptrace/tcptrace/attribute"
	"github.com/tcptrace/tcptrace/cgroup"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/kube"
	"github.com/tcptrace/tcptrace/metrics"
	"github.com/tcptrace/tcptrace/pipeline"
	"github.com/tcptrace/tcptrace/report"
	"github.com/tcptrace/tcptrace/server"
	"github.com/tcptrace/tcptrace/tracer"
)

// serveOptions are the metrics and Kubernetes flags.
type serveOptions struct {
	listen       string
	maxSeries    int
	deletedGrace time.Duration
	kube         string // on, off, auto
	nodeName     string
	kubeconfig   string
}

func parseServe(f flags) (serveOptions, error) {
	var o serveOptions
	var from string
	o.listen, from = f.get("listen")
	if o.listen != "" {
		host, port, err := net.SplitHostPort(o.listen)
		if err != nil {
			return o, f.errorf(from, o.listen, "want host:port or :port, e.g. :9979")
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return o, f.errorf(from, o.listen, "want a port number from 0 to 65535")
		}
		_ = host // any host, or none for every address
	}
	n, err := f.uint("metrics-max-series", 1, 1_000_000)
	if err != nil {
		return o, err
	}
	o.maxSeries = int(n)
	if o.deletedGrace, err = f.duration("deleted-grace", time.Second, 24*time.Hour); err != nil {
		return o, err
	}
	o.kube, from = f.get("kubernetes")
	switch o.kube {
	case "on", "off", "auto":
	default:
		return o, f.errorf(from, o.kube, "want on, off or auto")
	}
	o.nodeName, _ = f.get("node-name")
	o.kubeconfig, _ = f.get("kubeconfig")
	return o, nil
}

// kubeConfig returns the API server's config when enrichment is on, nil
// when it is off.
func (o serveOptions) kubeConfig() (*rest.Config, error) {
	if o.kube == "off" {
		return nil, nil
	}
	var rc *rest.Config
	var err error
	if o.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
		if err != nil {
			return nil, usagef("--kubeconfig %q: %v", o.kubeconfig, err)
		}
	} else {
		rc, err = kube.InClusterConfig()
		if err != nil {
			if o.kube == "auto" {
				return nil, nil // not in a cluster
			}
			return nil, usagef("--kubernetes on: %v (outside a cluster, give --kubeconfig)", err)
		}
	}
	if o.nodeName == "" {
		return nil, usagef("Kubernetes enrichment needs this node's name: set --node-name (the DaemonSet sets it from spec.nodeName), or --kubernetes off")
	}
	return rc, nil
}

// cluster holds what serves metrics and names pods.
type cluster struct {
	srv   *server.Server
	reg   *prometheus.Registry
	pods  *kube.Pods
	names *attribute.Workloads
	done  chan error
	log   *slog.Logger
}

// startCluster listens (before the tracer attaches, so /readyz says 503
// until it has) and starts the pod informer. It never waits for the API
// server: tracing goes on without it, and readiness says so.
func startCluster(ctx context.Context, o serveOptions, log *slog.Logger) (*cluster, error) {
	c := &cluster{reg: prometheus.NewRegistry(), log: log}
	rc, err := o.kubeConfig()
	if err != nil {
		return nil, err
	}
	if o.listen != "" {
		if c.srv, err = server.Listen(o.listen, c.reg, log); err != nil {
			return nil, err
		}
		c.srv.Ready("tracer", func() error { return errors.New("not attached yet") })
		c.done = make(chan error, 1)
		go func() { c.done <- c.srv.Serve() }()
		log.Info("serving metrics", "address", c.srv.Addr().String())
	}
	var lookup attribute.KubeLookup
	if rc != nil {
		c.pods, err = kube.New(kube.Config{Node: o.nodeName, DeletedGrace: o.deletedGrace, Logger: log}, rc)
		if err != nil {
			c.close()
			return nil, err
		}
		c.pods.Start(ctx)
		lookup = c.pods.Lookup
		log.Info("Kubernetes enrichment on", "node", o.nodeName, "api", rc.Host)
		c.reg.MustRegister(metrics.NewKubeCollector(c.pods.Synced, func() metrics.KubeStats {
			st := c.pods.Stats()
			return metrics.KubeStats{Hits: st.Hits, Deleted: st.Deleted, NotFound: st.NotFound, LivePods: st.LivePods, DeletedPods: st.DeletedPods}
		}))
		if c.srv != nil {
			c.srv.Ready("kubernetes", func() error {
				if !c.pods.Synced() {
					return errors.New("pod cache not synced with the API server")
				}
				return c.pods.Healthy()
			})
		}
	}
	c.names = attribute.NewWorkloads(lookup)
	c.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return c, nil
}

// withoutOwn is the kernel's side as the metrics and the leak report read
// it, without tcptrace's own server connections: inbound on its --listen
// port, in its own cgroup. A scrape's connection closing is tcptrace's
// doing, not the host's; the stuck events would still show one that stayed.
type withoutOwn struct {
	*tracer.Tracer
	port     uint16 // 0: no server
	cgroupID uint64 // 0: unknown, any cgroup
}

func (w withoutOwn) own(cgroupID uint64, dir events.Direction, port uint16) bool {
	return w.port != 0 && dir == events.DirInbound && port == w.port && (w.cgroupID == 0 || cgroupID == w.cgroupID)
}

// Aggregates visits the kernel's aggregates but tcptrace's own.
func (w withoutOwn) Aggregates(fn func(a *events.Aggregate)) error {
	return w.Tracer.Aggregates(func(a *events.Aggregate) {
		if !w.own(a.CgroupID, a.Dir, a.Port) {
			fn(a)
		}
	})
}

// Table visits the CLOSE-WAIT table but tcptrace's own sockets.
func (w withoutOwn) Table(fn func(ev *events.Event)) error {
	return w.Tracer.Table(func(ev *events.Event) {
		if !w.own(ev.CgroupID, ev.Dir, ev.LocalPort) {
			fn(ev)
		}
	})
}

// kernel is tr as the metrics and the report read it (withoutOwn).
func (c *cluster) kernel(tr *tracer.Tracer) withoutOwn {
	w := withoutOwn{Tracer: tr}
	if c == nil || c.srv == nil {
		return w
	}
	if a, ok := c.srv.Addr().(*net.TCPAddr); ok {
		w.port = uint16(a.Port)
	}
	id, err := cgroup.SelfID()
	if err != nil {
		// Then the port alone says which connections are ours.
		c.log.Debug("own cgroup unknown: leaving every inbound socket of the metrics port out", "error", err)
	}
	w.cgroupID = id
	return w
}

// attached registers the tracer's metrics and readiness: the ring buffer
// was read, and the loop handled it, within the last few flush intervals.
func (c *cluster) attached(tr *tracer.Tracer, p *pipeline.Pipeline, b *report.Builder, o options, version string) *metrics.Collector {
	col := metrics.New(metrics.Config{
		MaxSeries: o.serve.maxSeries, Grace: o.serve.deletedGrace,
		Version: version, Hook: tr.AttachPoint(), Lost: p.Lost,
	}, c.kernel(tr), c.names)
	col.SetSockets(p.Tracker())
	c.reg.MustRegister(col)
	if c.srv != nil {
		// The leak report, for tcptrace top --from.
		c.srv.Handle("GET "+server.PathReport, reportHandler(b))
		c.srv.Handle("GET "+server.PathCloseWait, closeWaitHandler(tr))
		stale := max(10*o.tracer.FlushInterval, 2*time.Second)
		started := time.Now()
		c.srv.Ready("tracer", func() error {
			last := p.LastProgress()
			if last.IsZero() {
				last = started
			}
			if age := time.Since(last); age > stale {
				return fmt.Errorf("ring buffer last read %v ago", age.Round(time.Millisecond))
			}
			return nil
		})
	}
	return col
}

// close stops serving and reports why the server stopped, if it failed.
func (c *cluster) close() error {
	if c.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.srv.Shutdown(ctx)
	if serveErr := <-c.done; serveErr != nil {
		err = serveErr
	}
	c.srv = nil
	return err
}

// closeWaitHandler lists the kernel's CLOSE-WAIT table as close_wait
// events, one JSON object per line: their time is the FIN's, so a client
// (tcptrace kill --from) knows every socket's age.
func closeWaitHandler(tr *tracer.Tracer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		bw := bufio.NewWriterSize(w, 64<<10)
		var line []byte
		var writeErr error
		// FIN times as the wall clock says now: the client (kill --from)
		// takes ages from them with its own clock, and a wall-clock step
		// since the last sample would add to every age.
		tr.Clock().Sync()
		err := tr.Table(func(ev *events.Event) {
			if writeErr != nil {
				return
			}
			line = append(events.AppendJSON(line[:0], ev), '\n')
			_, writeErr = bw.Write(line)
		})
		if err == nil {
			err = writeErr
		}
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			// The status is sent already: cut the stream, so the client
			// sees an error rather than a short list.
			panic(http.ErrAbortHandler)
		}
	})
}
