package main

import (
	"runtime"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/attribute"
	"github.com/tcptrace/tcptrace/internal/oneline"
	"github.com/tcptrace/tcptrace/output"
	"github.com/tcptrace/tcptrace/pipeline"
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
	tr, err := tracer.New(o.tracer)
	if err != nil {
		return err
	}
	out := output.New(c.App.Writer, o.format, o.width)
	attr := attribute.New(logger)
	cfg := pipeline.Config{
		CloseWait:   mode == tracer.ModeCloseWait,
		Track:       o.track,
		EverySocket: o.selection.EverySocket,
		Logger:      logger,
	}
	var sink pipeline.Sink = out
	if mode == tracer.ModeCloseWait {
		sink = pipeline.Filter(o.selection, out)
		if o.format == output.FormatTable {
			cfg.StatusInterval = o.statusInterval
		}
	}
	p := pipeline.New(cfg, tr, attr, sink)
	if mode == tracer.ModeCloseWait {
		if !tracer.Capable(unix.CAP_SYS_PTRACE) {
			logger.Warn("without CAP_SYS_PTRACE the descriptors of other processes cannot be read: owners will be unresolved")
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
	runErr := p.Run(c.Context)
	// Before Close: the summary reads the kernel's counts.
	attrs := append([]any{"events", out.Written()}, p.Summary()...)
	if mode == tracer.ModeCloseWait {
		st := attr.Stats()
		attrs = append(attrs, "owner_scans", st.FullScans, "owner_cache_hits", st.CacheHits)
		if n, err := tr.AggregateOverflows(); err == nil && n > 0 {
			attrs = append(attrs, "aggregate_overflows", n)
		}
	}
	closeErr := tr.Close()
	if pipeline.OutputClosed(p.Err()) {
		logger.Info("output closed by its reader: stopping")
	}
	attrs = append(attrs, "goroutines", runtime.NumGoroutine())
	logger.Info("stopped", attrs...)
	return oneline.Join(runErr, closeErr)
}
