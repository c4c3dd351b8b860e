package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tcptrace/tcptrace/attribute"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
	"github.com/tcptrace/tcptrace/pipeline"
	"github.com/tcptrace/tcptrace/report"
	"github.com/tcptrace/tcptrace/server"
	"github.com/tcptrace/tcptrace/tracer"
	"github.com/tcptrace/tcptrace/track"
	"github.com/tcptrace/tcptrace/tui"
)

// topEnv names top's environment variables (TCPTRACE_TOP_*: a DaemonSet's
// closewait configuration never leaks into a top run in its container).
var topEnv = map[string]string{
	"once":      "TCPTRACE_TOP_ONCE",
	"duration":  "TCPTRACE_TOP_DURATION",
	"refresh":   "TCPTRACE_TOP_REFRESH",
	"from":      "TCPTRACE_TOP_FROM",
	"threshold": "TCPTRACE_TOP_THRESHOLD",
	"port":      "TCPTRACE_TOP_PORTS",
	"netns":     "TCPTRACE_TOP_NETNS",
	"cgroup":    "TCPTRACE_TOP_CGROUP",
	"output":    "TCPTRACE_TOP_OUTPUT",
}

func topFlags() []cli.Flag {
	u := func(name, text string) string { return text + " [$" + topEnv[name] + "]" }
	return []cli.Flag{
		&cli.BoolFlag{Name: "once", Category: catOutput, Usage: u("once", "print one report after --duration and exit, for scripts and tickets")},
		&cli.StringFlag{Name: "duration", Value: "10s", Category: catOutput, Usage: u("duration", "with --once: how long to watch before the report (rates need time)")},
		&cli.StringFlag{Name: "refresh", Value: "1s", Category: catOutput, Usage: u("refresh", "how often the live view refreshes")},
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Category: catOutput, Usage: u("output", "with --once: table or json")},
		&cli.StringFlag{Name: "from", Category: catSelect, Usage: u("from", "show the report of a running tcptrace closewait --listen (host:port or URL) instead of tracing here")},
		&cli.StringFlag{Name: "threshold", Value: "30s", Category: catDetect, Usage: u("threshold", "a socket is stuck after this long in CLOSE-WAIT")},
		&cli.StringSliceFlag{Name: "port", Aliases: []string{"p"}, Category: catFilter, Usage: u("port", "only sockets with this local or remote port (repeatable; in the kernel)")},
		&cli.StringFlag{Name: "netns", Category: catFilter, Usage: u("netns", "only sockets of this network namespace, by inode (in the kernel)")},
		&cli.StringFlag{Name: "cgroup", Category: catFilter, Usage: u("cgroup", "only sockets of this cgroup v2 (a path, or a container id) and below (in the kernel)")},
	}
}

type topOptions struct {
	once             bool
	duration         time.Duration
	refresh          time.Duration
	from             string
	json             bool
	tracer           tracer.Config
	threshold        time.Duration
	width            int
	stdinIsTerminal  bool
	stdoutIsTerminal bool
}

func parseTop(c *cli.Context) (topOptions, error) {
	var o topOptions
	if c.Args().Len() > 0 {
		return o, usagef("unexpected argument %q", c.Args().First())
	}
	f := flags{c: c, lookup: os.LookupEnv, env: topEnv}
	var err error
	if o.once, err = f.bool("once"); err != nil {
		return o, err
	}
	if o.duration, err = f.duration("duration", 0, 24*time.Hour); err != nil {
		return o, err
	}
	if o.refresh, err = f.duration("refresh", 100*time.Millisecond, time.Hour); err != nil {
		return o, err
	}
	if o.threshold, err = f.duration("threshold", 10*time.Millisecond, 1000*time.Hour); err != nil {
		return o, err
	}
	out, from := f.get("output")
	switch out {
	case "table":
	case "json":
		o.json = true
	default:
		return o, f.errorf(from, out, "want table or json")
	}
	if o.json && !o.once {
		return o, usagef("--output json goes with --once: the live view is a terminal's")
	}
	o.from, _ = f.get("from")
	o.tracer = tracer.Config{Mode: tracer.ModeCloseWait, EmitFloor: o.threshold}
	if o.tracer.Ports, _, err = f.ports("port"); err != nil {
		return o, err
	}
	if o.tracer.NetNS, err = f.netns("netns"); err != nil {
		return o, err
	}
	if v, from := f.get("cgroup"); v != "" {
		sel, err := f.cgroup(v, from)
		if err != nil {
			return o, err
		}
		o.tracer.CgroupID, o.tracer.CgroupLevel = sel.ID, sel.Level
	}
	if o.from != "" && (len(o.tracer.Ports) > 0 || o.tracer.NetNS != 0 || o.tracer.CgroupID != 0) {
		return o, usagef("--from shows the running tcptrace's report: its own filters apply, not --port, --netns or --cgroup")
	}
	o.width, o.stdoutIsTerminal = terminalWidth(c.App.Writer)
	o.stdinIsTerminal = isTerminal(os.Stdin)
	if !o.once && (!o.stdoutIsTerminal || !o.stdinIsTerminal) {
		return o, usagef("the live view needs a terminal: use --once for a report on a pipe or in a script")
	}
	return o, nil
}

func runTop(c *cli.Context) error {
	o, err := parseTop(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	var fetch tui.Fetch
	var stop func() error
	// The live view owns the terminal: tcptrace's log waits until it is
	// done.
	var logs bytes.Buffer
	logW := c.App.ErrWriter
	if !o.once {
		logW = &syncWriter{w: &logs}
	}
	log := newLogger(logW, slog.LevelInfo)
	if o.from != "" {
		fetch = func(ctx context.Context) (report.Report, error) { return fetchReport(ctx, o.from) }
	} else {
		fetch, stop, err = startLocalReport(ctx, o, log)
		if err != nil {
			return err
		}
	}
	var runErr error
	if o.once {
		if o.from == "" {
			select {
			case <-time.After(o.duration):
			case <-ctx.Done():
			}
		}
		r, err := fetch(ctx)
		if err != nil {
			runErr = err
		} else if o.json {
			enc := json.NewEncoder(c.App.Writer)
			runErr = enc.Encode(r)
		} else {
			runErr = tui.WriteTable(c.App.Writer, r, o.width)
		}
	} else {
		runErr = tui.Run(ctx, os.Stdin, c.App.Writer, o.refresh, fetch)
	}
	cancel()
	var stopErr error
	if stop != nil {
		stopErr = stop()
	}
	if !o.once && logs.Len() > 0 {
		// Warnings and errors only: the start-up chatter is of no use now.
		for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				fmt.Fprintln(c.App.ErrWriter, line)
			}
		}
	}
	return oneline.Join(runErr, stopErr)
}

// startLocalReport attaches a tracer here, quiet as closewait's default,
// and builds reports from it, sampling at the refresh interval.
func startLocalReport(ctx context.Context, o topOptions, log *slog.Logger) (tui.Fetch, func() error, error) {
	o.tracer.Logger = log
	tr, err := tracer.New(o.tracer)
	if err != nil {
		return nil, nil, err
	}
	attr := attribute.New(log)
	tcfg := track.Config{Threshold: o.threshold, MaxSockets: tracer.DefaultMaxTracked, MaxOwnerWait: pipeline.DefaultMaxOwnerWait}
	p := pipeline.New(pipeline.Config{CloseWait: true, Track: tcfg, Logger: log}, tr, attr, discardSink{})
	if _, err := p.Snapshot(); err != nil {
		log.Warn("start-up snapshot incomplete", "error", err)
	}
	b := report.NewBuilder(report.Config{Threshold: o.threshold, Warn: warnOnce(log), Listeners: tr.Listening}, tr, p.Tracker(),
		attribute.NewWorkloads(nil), report.KernelPeers(o.tracer.NetNS, o.tracer.Ports))
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(ctx) }()
	stopSampling := sampleEvery(ctx, b, min(o.refresh, time.Second), log)
	stop := func() error {
		stopSampling()
		err := <-runDone
		return oneline.Join(err, tr.Close())
	}
	return func(context.Context) (report.Report, error) { return b.Report() }, stop, nil
}

// sampleEvery samples the builder now, then until ctx ends or stop is
// called. The first sample is the base of the rates: taken at once, before
// the tracer says it is ready, what comes after counts.
func sampleEvery(ctx context.Context, b *report.Builder, interval time.Duration, log *slog.Logger) (stop func()) {
	sample := func() {
		if err := b.Sample(); err != nil {
			log.Warn("sample the kernel's counts", "error", err)
		}
	}
	sample()
	return every(ctx, interval, sample)
}

// fetchReport reads a running tcptrace's report.
func fetchReport(ctx context.Context, addr string) (report.Report, error) {
	var r report.Report
	err := getFrom(ctx, addr, server.PathReport, 10*time.Second, func(url string, body io.Reader) error {
		if err := json.NewDecoder(body).Decode(&r); err != nil {
			return fmt.Errorf("--from %s: not a tcptrace report: %v", url, err)
		}
		return nil
	})
	return r, err
}

// reportHandler serves a builder's report as JSON (GET /api/v1/report).
func reportHandler(b *report.Builder) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		r, err := b.Report()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r)
	})
}

// discardSink drops events: top shows reports, not events.
type discardSink struct{}

func (discardSink) Write(*events.Event) error { return nil }
func (discardSink) Flush() error              { return nil }

// syncWriter serialises writes (the logger's, from several goroutines).
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// warnOnce logs what a report had to leave out, once per distinct message
// a minute at most: a report is made every refresh.
func warnOnce(log *slog.Logger) func(error) {
	var mu sync.Mutex
	last := map[string]time.Time{}
	return func(err error) {
		mu.Lock()
		defer mu.Unlock()
		msg := err.Error()
		if t, ok := last[msg]; ok && time.Since(t) < time.Minute {
			return
		}
		last[msg] = time.Now()
		log.Warn("report incomplete", "error", err)
	}
}
