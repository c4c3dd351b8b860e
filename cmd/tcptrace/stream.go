package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/attribute"
	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/cgroup"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/heal"
	"github.com/tcptrace/tcptrace/internal/oneline"
	"github.com/tcptrace/tcptrace/metrics"
	"github.com/tcptrace/tcptrace/output"
	"github.com/tcptrace/tcptrace/pipeline"
	"github.com/tcptrace/tcptrace/report"
	"github.com/tcptrace/tcptrace/tracer"
)

// runTracer wires the tracer, the pipeline and the output together.
func runTracer(c *cli.Context, mode tracer.Mode) error {
	o, err := parseOptions(c, mode)
	if err != nil {
		return err
	}
	logger := newLogger(c.App.ErrWriter, o.level)
	o.tracer.Logger = logger
	var cl *cluster
	if mode == tracer.ModeCloseWait {
		// Before attaching: /readyz answers 503 meanwhile.
		if cl, err = startCluster(c.Context, o.serve, logger); err != nil {
			return err
		}
	}
	tr, err := tracer.New(o.tracer)
	if err != nil {
		if cl != nil {
			err = oneline.Join(err, cl.close())
		}
		return err
	}
	out := output.New(c.App.Writer, o.format, o.width)
	attr := attribute.New(logger)
	if cl != nil && cl.pods != nil {
		attr.SetKube(cl.pods.Lookup)
	}
	cfg := pipeline.Config{
		CloseWait:   mode == tracer.ModeCloseWait,
		Track:       o.track,
		EverySocket: o.selection.EverySocket,
		Logger:      logger,
	}
	sinks := []pipeline.Sink{out}
	if mode == tracer.ModeCloseWait {
		sinks[0] = pipeline.Filter(o.selection, out)
		if o.format == output.FormatTable {
			cfg.StatusInterval = o.statusInterval
		}
	}
	// The collector counts stuck reports as a sink; it is made once the
	// pipeline exists, so it goes in through a forwarding sink.
	var col *metrics.Collector
	if cl != nil {
		sinks = append(sinks, sinkFunc(func(ev *events.Event) error { return col.Write(ev) }))
	}
	// The leak report, sampled every second, for the summary events and
	// GET /api/v1/report.
	var b *report.Builder
	if mode == tracer.ModeCloseWait && o.summaryInterval > 0 {
		cfg.SummaryInterval = o.summaryInterval
		cfg.Summary = func() ([]events.Event, error) { return summaryEvents(b) }
	}
	if mode == tracer.ModeCloseWait {
		cfg.ListenInterval = listenInterval
	}
	if o.heal.after > 0 {
		h, closeHeal, err := newHealer(o.heal, tr, logger)
		if err != nil {
			if cl != nil {
				err = oneline.Join(err, cl.close())
			}
			return oneline.Join(err, tr.Close())
		}
		defer closeHeal()
		cfg.Heal, cfg.HealInterval = h, h.Interval()
	}
	p := pipeline.New(cfg, tr, attr, sinks...)
	stopSampling := func() {}
	if mode == tracer.ModeCloseWait && (o.summaryInterval > 0 || o.serve.listen != "") {
		names := attribute.NewWorkloads(nil)
		if cl != nil {
			names = cl.names
		}
		b = report.NewBuilder(report.Config{Threshold: o.track.Threshold, Warn: warnOnce(logger), Listeners: tr.Listening}, cl.kernel(tr), p.Tracker(), names,
			report.KernelPeers(o.tracer.NetNS, o.tracer.Ports))
		stopSampling = sampleEvery(c.Context, b, time.Second, logger)
	}
	stopPrune := func() {}
	if cl != nil {
		col = cl.attached(tr, p, b, o, versionString())
		stopPrune = prunePeriodically(c.Context, col, logger)
	}
	if mode == tracer.ModeCloseWait {
		if !tracer.Capable(unix.CAP_SYS_PTRACE) {
			logger.Warn("without CAP_SYS_PTRACE the descriptors of other processes cannot be read: owners will be unresolved")
		} else if !tracer.Capable(unix.CAP_DAC_READ_SEARCH) {
			logger.Warn("without CAP_DAC_READ_SEARCH the descriptors of processes of other users cannot be read: their sockets' owners will be unresolved")
		}
		logger.Info("watching CLOSE-WAIT", "threshold", o.track.Threshold, "repeat", o.track.Repeat,
			"every_socket", o.selection.EverySocket, "min_latency", o.selection.MinLatency,
			"ports", o.tracer.Ports, "netns", o.tracer.NetNS, "cgroup_id", o.tracer.CgroupID)
		n, err := p.Snapshot()
		if err != nil {
			logger.Warn("start-up snapshot incomplete", "error", err)
		}
		logger.Info("start-up snapshot", "close_wait_sockets", n)
	} else {
		logger.Info("tracing transitions", "ports", o.tracer.Ports, "netns", o.tracer.NetNS, "cgroup_id", o.tracer.CgroupID)
	}
	var runErr error
	if o.readyFile != "" {
		// Whoever waits for it would wait for ever: stop rather than run.
		if runErr = writeReadyFile(o.readyFile); runErr == nil {
			defer os.Remove(o.readyFile)
		}
	}
	if runErr == nil {
		runErr = p.Run(c.Context)
	}
	// Before Close: the summary reads the kernel's counts.
	attrs := append([]any{"events", out.Written()}, p.Summary()...)
	if mode == tracer.ModeCloseWait {
		st := attr.Stats()
		attrs = append(attrs, "owner_scans", st.FullScans, "owner_cache_hits", st.CacheHits)
		if n, err := tr.AggregateOverflows(); err == nil && n > 0 {
			attrs = append(attrs, "aggregate_overflows", n)
		}
		// Every accept() failure is counted unless the kernel's table of
		// them was full, or the call could not be followed.
		if lost, untracked, err := tr.AcceptFailuresLost(); err == nil && lost+untracked > 0 {
			attrs = append(attrs, "accept_failures_uncounted", lost, "accepts_unfollowed", untracked)
		}
	}
	stopPrune()
	stopSampling()
	var closeErr error
	if cl != nil {
		// Before the tracer's maps go: a scrape in progress may read them.
		closeErr = cl.close()
	}
	closeErr = oneline.Join(closeErr, tr.Close())
	if pipeline.OutputClosed(p.Err()) {
		logger.Info("output closed by its reader: stopping")
	}
	attrs = append(attrs, "goroutines", runtime.NumGoroutine())
	logger.Info("stopped", attrs...)
	return oneline.Join(runErr, closeErr)
}

// writeReadyFile creates path whole (written aside, then renamed), so
// that whoever polls for it never sees it half written. It holds the pid.
func writeReadyFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("--ready-file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--ready-file: %w", err)
	}
	return nil
}

// sinkFunc is a pipeline sink that only writes.
type sinkFunc func(ev *events.Event) error

func (f sinkFunc) Write(ev *events.Event) error { return f(ev) }
func (f sinkFunc) Flush() error                 { return nil }

// newHealer makes closewait's self-healing policy (--destroy-after), with
// a destroyer of its own.
func newHealer(o healOptions, tr *tracer.Tracer, log *slog.Logger) (*heal.Healer, func(), error) {
	d, err := tracer.NewDestroyer()
	if err != nil {
		return nil, nil, fmt.Errorf("--destroy-after: %w", err)
	}
	var paths *cgroup.Resolver
	if o.sel.Cgroup != "" {
		root, _ := cgroup.UnifiedRoot()
		paths = cgroup.NewResolver(root, time.Second)
	}
	h := heal.New(heal.Config{
		After: o.after, Rate: o.rate, DryRun: o.dryRun, Select: o.sel,
		Destroy: d.Destroy, Method: d.Method(), Cookies: tr.SocketCookie(), List: tracer.ListCloseWaitSockets,
		CgroupPath: func(id uint64) (string, bool) {
			if paths == nil {
				return "", false
			}
			return paths.Path(id)
		},
		BootNow: bootclock.Now, Logger: log,
	})
	log.Warn("self-healing on: sockets in CLOSE-WAIT longer than --destroy-after are destroyed; their applications get an error on their next use",
		"destroy_after", o.after, "rate", o.rate, "dry_run", o.dryRun, "method", d.Method())
	return h, func() { d.Close() }, nil
}

// listenInterval is how often closewait looks at the listeners' drops,
// for listen_drops events: a sock_diag dump per network namespace.
const listenInterval = 5 * time.Second

// pruneInterval is how often the series and kernel aggregates of workloads
// gone for the grace period are dropped when nobody scrapes.
const pruneInterval = time.Minute

func prunePeriodically(ctx context.Context, col *metrics.Collector, log *slog.Logger) (stop func()) {
	return every(ctx, pruneInterval, func() {
		if err := col.Prune(); err != nil {
			log.Warn("prune aggregates of workloads gone", "error", err)
		}
	})
}

// every runs fn at each tick of interval, in a goroutine of its own, until
// ctx ends or stop is called; stop returns once fn has returned.
func every(ctx context.Context, interval time.Duration, fn func()) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				fn()
			}
		}
	}()
	return func() { cancel(); <-done }
}

// summaryEvents makes a summary event of each row of the leak report.
func summaryEvents(b *report.Builder) ([]events.Event, error) {
	r, err := b.Report()
	if err != nil {
		return nil, err
	}
	evs := make([]events.Event, 0, len(r.Rows))
	for i := range r.Rows {
		row := &r.Rows[i]
		data, err := json.Marshal(row)
		if err != nil {
			return nil, err
		}
		w := row.Workload.Cgroup
		if row.Workload.Pod != "" {
			w = row.Workload.Namespace + "/" + row.Workload.Pod
		}
		evs = append(evs, events.Event{
			Kind: events.KindSummary, Time: r.Time, Row: data,
			RowText: fmt.Sprintf("%s port %d %s: in CLOSE-WAIT %d, stuck %d, %+.0f/min", w, row.Port, row.Direction,
				row.InCloseWait, row.Stuck, row.GrowthPerMinute),
		})
	}
	return evs, nil
}
