package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/cgroup"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/heal"
	"github.com/tcptrace/tcptrace/metrics"
	"github.com/tcptrace/tcptrace/output"
	"github.com/tcptrace/tcptrace/pipeline"
	"github.com/tcptrace/tcptrace/tracer"
	"github.com/tcptrace/tcptrace/track"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	app := &cli.App{
		Name:  "tcptrace",
		Usage: "trace the Linux TCP state machine; find sockets stuck in CLOSE-WAIT",
		Description: "Needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) and Linux 5.8+ with BTF.\n" +
			"Every flag can also be set with the environment variable shown; a flag given on the command line wins.",
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		// Errors are returned to main, which owns the exit code.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return usagef("unknown command %q (see tcptrace --help)", c.Args().First())
			}
			cli.ShowAppHelp(c)
			return usagef("no command given")
		},
		Commands: []*cli.Command{
			{
				Name:  "closewait",
				Usage: "report sockets stuck in CLOSE-WAIT, and slow closes after the peer's FIN",
				Description: "By default only what needs attention is written: stuck sockets, their closes, aborts and\n" +
					"lost events. Healthy sockets are only counted, in the kernel (see the status rows on a terminal).",
				Flags:        append(closewaitFlags(), commonFlags()...),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					return runTracer(c, tracer.ModeCloseWait)
				},
			},
			{
				Name:         "trace",
				Usage:        "report every TCP state transition",
				Flags:        commonFlags(),
				OnUsageError: onUsageError,
				Action: func(c *cli.Context) error {
					return runTracer(c, tracer.ModeTrace)
				},
			},
			{
				Name:  "top",
				Usage: "live leak report: which workload leaks on which port, how fast, since when, why, and when its descriptors run out",
				Description: "Traces here (quiet, as closewait), or shows a running tcptrace's report with --from.\n" +
					"Keys: q quit, up/down select a row (its latency histogram and CLOSE-WAIT history below), s/S sort.",
				Flags:        topFlags(),
				OnUsageError: onUsageError,
				Action:       runTop,
			},
			{
				Name:  "kill",
				Usage: "destroy sockets stuck in CLOSE-WAIT (as ss -K does), explicitly and safely",
				Description: "A stop-gap for a leak until its fix ships: the holder gets an error on the socket instead of\n" +
					"holding it for ever. --older-than is required; sockets are listed and confirmed first unless --yes.\n" +
					"Each socket's state and identity are checked again when it is destroyed.",
				Flags:        killFlags(),
				OnUsageError: onUsageError,
				Action:       runKill,
			},
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					if c.Args().Len() > 0 {
						return usagef("version takes no arguments")
					}
					_, err := fmt.Fprintln(c.App.Writer, versionString())
					return err
				},
			},
		},
	}
	return app.RunContext(ctx, args)
}

func onUsageError(_ *cli.Context, err error, _ bool) error {
	return usageError{err}
}

// Flags carry no EnvVars: urfave/cli would parse a bad environment value
// before the command line and fail even when the flag is given. envOf names
// each flag's variable; options reads it only for flags not given.
var envOf = map[string]string{
	"threshold":          "TCPTRACE_THRESHOLD",
	"repeat":             "TCPTRACE_REPEAT",
	"all":                "TCPTRACE_ALL",
	"events":             "TCPTRACE_EVENTS",
	"min-latency":        "TCPTRACE_MIN_LATENCY",
	"pid":                "TCPTRACE_PIDS",
	"comm":               "TCPTRACE_COMMS",
	"status-interval":    "TCPTRACE_STATUS_INTERVAL",
	"max-aggregates":     "TCPTRACE_MAX_AGGREGATES",
	"port":               "TCPTRACE_PORTS",
	"netns":              "TCPTRACE_NETNS",
	"cgroup":             "TCPTRACE_CGROUP",
	"output":             "TCPTRACE_OUTPUT",
	"attach":             "TCPTRACE_ATTACH",
	"max-tracked":        "TCPTRACE_MAX_TRACKED",
	"ring-buffer-size":   "TCPTRACE_RING_BUFFER_SIZE",
	"flush-interval":     "TCPTRACE_FLUSH_INTERVAL",
	"log-level":          "TCPTRACE_LOG_LEVEL",
	"listen":             "TCPTRACE_LISTEN",
	"summary-interval":   "TCPTRACE_SUMMARY_INTERVAL",
	"metrics-max-series": "TCPTRACE_METRICS_MAX_SERIES",
	"deleted-grace":      "TCPTRACE_DELETED_GRACE",
	"kubernetes":         "TCPTRACE_KUBERNETES",
	"node-name":          "TCPTRACE_NODE_NAME",
	"kubeconfig":         "TCPTRACE_KUBECONFIG",
	"pin-table":          "TCPTRACE_PIN_TABLE",
	"pin-dir":            "TCPTRACE_PIN_DIR",
	"ready-file":         "TCPTRACE_READY_FILE",
	"destroy-after":      "TCPTRACE_DESTROY_AFTER",
	"destroy-port":       "TCPTRACE_DESTROY_PORTS",
	"destroy-pid":        "TCPTRACE_DESTROY_PIDS",
	"destroy-comm":       "TCPTRACE_DESTROY_COMMS",
	"destroy-cgroup":     "TCPTRACE_DESTROY_CGROUP",
	"destroy-rate":       "TCPTRACE_DESTROY_RATE",
	"destroy-dry-run":    "TCPTRACE_DESTROY_DRY_RUN",
}

// usage appends the flag's environment variable, as urfave/cli shows it.
func usage(name, text string) string {
	return text + " [$" + envOf[name] + "]"
}

const (
	catDetect = "Detection:"
	catSelect = "What is written:"
	catFilter = "Filters:"
	catOutput = "Output:"
	catKernel = "Kernel:"
	catServe  = "Metrics and Kubernetes:"
	catHeal   = "Self-healing (off by default):"
)

func str(cat, name, value, text string, aliases ...string) *cli.StringFlag {
	return &cli.StringFlag{Name: name, Aliases: aliases, Value: value, Category: cat, Usage: usage(name, text)}
}

func list(cat, name, text string, aliases ...string) *cli.StringSliceFlag {
	return &cli.StringSliceFlag{Name: name, Aliases: aliases, Category: cat, Usage: usage(name, text)}
}

func closewaitFlags() []cli.Flag {
	return []cli.Flag{
		str(catDetect, "threshold", "30s", "report a socket as stuck once it has been in CLOSE-WAIT this long"),
		str(catDetect, "repeat", "0s", "report a stuck socket again at this interval; 0 reports it once"),
		&cli.BoolFlag{Name: "all", Aliases: []string{"a"}, Category: catSelect,
			Usage: usage("all", "write every socket that enters CLOSE-WAIT: close_wait and app_close for each, not only stuck ones")},
		str(catSelect, "events", "", "write only these event kinds, comma-separated: close_wait, stuck, app_close, abort, listen_drops, accept_failed, lost, summary (default: all of them)"),
		str(catSelect, "min-latency", "0s", "also write the app_close of sockets closed at least this long after the peer's FIN; 0 is off"),
		list(catFilter, "pid", "only sockets held or closed by this process id (repeatable; in user space, on the owners found)"),
		list(catFilter, "comm", "only sockets held or closed by a process of this name (repeatable; in user space)"),
		str(catOutput, "status-interval", "5s", "on a table, write a status row (sockets in CLOSE-WAIT, closes/s, p99) this often; 0 is off"),
		str(catOutput, "summary-interval", "0s", "write the leak report's rows as summary events this often, for log pipelines; 0 is off"),
		str(catKernel, "max-aggregates", strconv.Itoa(tracer.DefaultMaxAggregates),
			"bound on the kernel's aggregate keys (cgroup, service port, direction); the excess is counted under one key"),
		&cli.BoolFlag{Name: "pin-table", Category: catKernel,
			Usage: usage("pin-table", "keep the kernel's CLOSE-WAIT table pinned in bpffs across restarts, so sockets keep their age; the next start adopts it")},
		str(catKernel, "pin-dir", tracer.DefaultPinDir, "directory on a bpf filesystem for --pin-table"),
		str(catServe, "listen", "", "serve /metrics, /healthz and /readyz over HTTP on this address, e.g. :9979; empty is off"),
		str(catServe, "metrics-max-series", strconv.Itoa(metrics.DefaultMaxSeries),
			"cap on label sets (workload, port, direction) with series of their own; the rest are folded into one labelled other"),
		str(catServe, "deleted-grace", metrics.DefaultGrace.String(),
			"how long a deleted pod's names, and the series of a workload whose cgroup is gone, are kept"),
		str(catServe, "kubernetes", "auto", "pod names from the Kubernetes API: on, off, or auto (on when a service-account token is mounted, or with --kubeconfig)"),
		str(catServe, "node-name", "", "this node's name, to watch its pods only (the DaemonSet sets it from spec.nodeName)"),
		str(catServe, "kubeconfig", "", "kubeconfig file for the Kubernetes API, instead of the in-cluster service account"),
		str(catHeal, "destroy-after", "0s",
			"destroy sockets stuck in CLOSE-WAIT this long (at least --threshold), among those the --destroy-* selectors name; their application gets an error on its next use of the socket; 0 is off"),
		list(catHeal, "destroy-port", "--destroy-after: only sockets with this local or remote port (repeatable)"),
		list(catHeal, "destroy-pid", "--destroy-after: only sockets held by this process (repeatable)"),
		list(catHeal, "destroy-comm", "--destroy-after: only sockets held by a process of this name (repeatable)"),
		str(catHeal, "destroy-cgroup", "", "--destroy-after: only sockets of this cgroup v2 (a path, or a container id) or below it"),
		str(catHeal, "destroy-rate", "1", "--destroy-after: at most this many sockets destroyed per second"),
		&cli.BoolFlag{Name: "destroy-dry-run", Category: catHeal,
			Usage: usage("destroy-dry-run", "--destroy-after: destroy nothing, write a not_destroyed event (dry_run) for each socket it would destroy")},
	}
}

func commonFlags() []cli.Flag {
	return []cli.Flag{
		list(catFilter, "port", "only sockets with this local or remote port (repeatable or comma-separated; in the kernel)", "p"),
		str(catFilter, "netns", "", "only sockets of this network namespace, by inode (readlink /proc/PID/ns/net; in the kernel)"),
		str(catFilter, "cgroup", "", "only sockets of this cgroup v2 (a path, or a container id) and below it (in the kernel)"),
		str(catOutput, "output", string(output.FormatAuto), "json, table, or auto: a table on a terminal, JSON lines otherwise", "o"),
		str(catOutput, "log-level", "info", "stderr log level: debug, info, warn or error"),
		str(catOutput, "ready-file", "", "create this file once tracing runs (attached, start-up snapshot taken), remove it at exit: for scripts and tests"),
		str(catKernel, "attach", string(tracer.AttachAuto), "kernel hook: auto, tp_btf or tracepoint (auto tries tp_btf, then the tracepoint)"),
		str(catKernel, "max-tracked", strconv.Itoa(tracer.DefaultMaxTracked), "bound on sockets tracked at once, in the kernel and in tcptrace; excess is counted as lost"),
		str(catKernel, "ring-buffer-size", strconv.Itoa(tracer.DefaultRingBufBytes), "kernel ring buffer size in bytes, a power of two"),
		str(catKernel, "flush-interval", tracer.DefaultFlushInterval.String(), "longest an event waits in the kernel before tcptrace reads it"),
	}
}

// flags reads flag values: the command line, else the flag's environment
// variable, else the default. Every error names where the value came from.
type flags struct {
	c      *cli.Context
	lookup func(string) (string, bool)
	env    map[string]string // flag -> variable; envOf when nil
}

func (f flags) envName(name string) string {
	if f.env != nil {
		return f.env[name]
	}
	return envOf[name]
}

// get returns the raw value of a flag and where it came from.
func (f flags) get(name string) (value, from string) {
	if f.c.IsSet(name) {
		return f.c.String(name), "--" + name
	}
	if v, ok := f.lookup(f.envName(name)); ok {
		return v, f.envName(name)
	}
	return f.c.String(name), "--" + name
}

func (f flags) errorf(from, value, format string, args ...any) error {
	return usagef("%s %q: %s", from, value, fmt.Sprintf(format, args...))
}

func (f flags) duration(name string, lo, hi time.Duration) (time.Duration, error) {
	v, from := f.get(name)
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		if _, numErr := strconv.ParseFloat(strings.TrimSpace(v), 64); numErr == nil && v != "0" {
			return 0, f.errorf(from, v, "a duration needs a unit (use a unit, e.g. %ss)", strings.TrimSpace(v))
		}
		return 0, f.errorf(from, v, "not a duration (use a unit, e.g. 30s)")
	}
	if d < lo || d > hi {
		return 0, f.errorf(from, v, "out of range %v-%v", lo, hi)
	}
	return d, nil
}

func (f flags) uint(name string, lo, hi uint64) (uint64, error) {
	v, from := f.get(name)
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, f.errorf(from, v, "not a whole number")
	}
	if n < lo || n > hi {
		return 0, f.errorf(from, v, "out of range %d-%d", lo, hi)
	}
	return n, nil
}

func (f flags) bool(name string) (bool, error) {
	if f.c.IsSet(name) {
		return f.c.Bool(name), nil
	}
	v, ok := f.lookup(f.envName(name))
	if !ok || v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, f.errorf(f.envName(name), v, "want true or false")
	}
	return b, nil
}

// list returns a repeatable flag's values, or the comma-separated
// environment variable's.
func (f flags) list(name string) (values []string, from string) {
	if f.c.IsSet(name) {
		for _, v := range f.c.StringSlice(name) {
			values = append(values, strings.Split(v, ",")...)
		}
		return values, "--" + name
	}
	if v, ok := f.lookup(f.envName(name)); ok && v != "" {
		return strings.Split(v, ","), f.envName(name)
	}
	return nil, "--" + name
}

// ports reads a repeatable port flag, and says where it came from.
func (f flags) ports(name string) ([]uint16, string, error) {
	values, from := f.list(name)
	var ports []uint16
	for _, v := range values {
		p, err := strconv.ParseUint(strings.TrimSpace(v), 10, 16)
		if err != nil || p < 1 {
			return nil, from, f.errorf(from, v, "a port is a number from 1 to 65535")
		}
		ports = append(ports, uint16(p))
	}
	return ports, from, nil
}

// pids reads a repeatable flag of process ids.
func (f flags) pids(name string) ([]int, error) {
	values, from := f.list(name)
	var pids []int
	for _, v := range values {
		pid, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || pid < 1 {
			return nil, f.errorf(from, v, "want a process id")
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// comms reads a repeatable flag of process names, as /proc/PID/comm has
// them.
func (f flags) comms(name string) ([]string, error) {
	values, from := f.list(name)
	var comms []string
	for _, v := range values {
		if v = strings.TrimSpace(v); v == "" || len(v) > 15 {
			return nil, f.errorf(from, v, "want a process name of 1 to 15 bytes, as in /proc/PID/comm")
		}
		comms = append(comms, v)
	}
	return comms, nil
}

// setOf is the set of xs; nil when there are none.
func setOf[T comparable](xs []T) map[T]bool {
	if len(xs) == 0 {
		return nil
	}
	set := make(map[T]bool, len(xs))
	for _, x := range xs {
		set[x] = true
	}
	return set
}

// netns reads a network namespace inode flag, as readlink shows it or
// bare; 0 when not given.
func (f flags) netns(name string) (uint32, error) {
	v, from := f.get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSuffix(strings.TrimPrefix(v, "net:["), "]"), "net:"), 10, 32)
	if err != nil || n == 0 {
		return 0, f.errorf(from, v, "want a network namespace inode, e.g. 4026531840 (readlink /proc/PID/ns/net)")
	}
	return uint32(n), nil
}

// cgroup finds the cgroup v2 that value names (a path, or a container
// id), given by from.
func (f flags) cgroup(value, from string) (cgroup.Selected, error) {
	root, err := cgroup.UnifiedRoot()
	if err != nil {
		return cgroup.Selected{}, f.errorf(from, value, "no cgroup v2 hierarchy to find it in: %v", err)
	}
	sel, err := cgroup.Select(root, value)
	if err != nil {
		return cgroup.Selected{}, f.errorf(from, value, "%v", err)
	}
	return sel, nil
}

// options are the validated flags.
type options struct {
	tracer tracer.Config
	track  track.Config
	format output.Format
	width  int // terminal width for a table, 0 when not a terminal
	level  slog.Level
	// readyFile is created once tracing runs, and removed at exit.
	readyFile string

	// closewait
	selection       pipeline.Selection
	statusInterval  time.Duration
	summaryInterval time.Duration
	serve           serveOptions
	heal            healOptions
}

// healOptions are closewait's --destroy-* flags (after 0: off).
type healOptions struct {
	after  time.Duration
	rate   float64
	dryRun bool
	sel    heal.Selector
}

const maxTrackedLimit = 1 << 24

func parseOptions(c *cli.Context, mode tracer.Mode) (options, error) {
	var o options
	if c.Args().Len() > 0 {
		return o, usagef("unexpected argument %q", c.Args().First())
	}
	f := flags{c: c, lookup: os.LookupEnv}
	var err error
	if o.tracer, err = tracerConfig(f, mode); err != nil {
		return o, err
	}
	out, from := f.get("output")
	format, err := output.ParseFormat(out)
	if err != nil {
		return o, f.errorf(from, out, "want auto, json or table")
	}
	width, isTTY := terminalWidth(c.App.Writer)
	if format == output.FormatAuto {
		format = output.FormatJSON
		if isTTY {
			format = output.FormatTable
		}
	}
	o.format = format
	if format == output.FormatTable {
		o.width = width
	}
	lvl, from := f.get("log-level")
	if err := o.level.UnmarshalText([]byte(lvl)); err != nil {
		return o, f.errorf(from, lvl, "want debug, info, warn or error")
	}
	if v, from := f.get("ready-file"); v != "" {
		if st, err := os.Stat(filepath.Dir(v)); err != nil || !st.IsDir() {
			return o, f.errorf(from, v, "its directory must exist")
		}
		o.readyFile = v
	}
	if mode == tracer.ModeCloseWait {
		if err := closewaitOptions(f, &o); err != nil {
			return o, err
		}
	}
	return o, nil
}

func tracerConfig(f flags, mode tracer.Mode) (tracer.Config, error) {
	cfg := tracer.Config{Mode: mode}
	var err error
	ports, from, err := f.ports("port")
	if err != nil {
		return cfg, err
	}
	cfg.Ports = ports
	if len(cfg.Ports) > 64 {
		return cfg, usagef("%s: at most 64 ports, got %d", from, len(cfg.Ports))
	}
	if cfg.NetNS, err = f.netns("netns"); err != nil {
		return cfg, err
	}
	if v, from := f.get("cgroup"); v != "" {
		sel, err := f.cgroup(v, from)
		if err != nil {
			return cfg, err
		}
		cfg.CgroupID, cfg.CgroupLevel = sel.ID, sel.Level
	}
	a, from := f.get("attach")
	cfg.Attach = tracer.Attach(a)
	if cfg.Attach != tracer.AttachAuto && cfg.Attach != tracer.AttachTPBTF && cfg.Attach != tracer.AttachTracepoint {
		return cfg, f.errorf(from, a, "want auto, tp_btf or tracepoint")
	}
	maxTracked, err := f.uint("max-tracked", 1, maxTrackedLimit)
	if err != nil {
		return cfg, err
	}
	cfg.MaxTracked = uint32(maxTracked)
	page := uint64(os.Getpagesize())
	ring, err := f.uint("ring-buffer-size", page, 1<<30)
	if err != nil {
		return cfg, err
	}
	if ring&(ring-1) != 0 {
		v, from := f.get("ring-buffer-size")
		return cfg, f.errorf(from, v, "want a power of two from %d to %d", page, 1<<30)
	}
	cfg.RingBufBytes = uint32(ring)
	if cfg.FlushInterval, err = f.duration("flush-interval", time.Millisecond, 10*time.Second); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func closewaitOptions(f flags, o *options) error {
	var err error
	t := track.Config{MaxSockets: int(o.tracer.MaxTracked), MaxOwnerWait: pipeline.DefaultMaxOwnerWait}
	if t.Threshold, err = f.duration("threshold", 10*time.Millisecond, 1000*time.Hour); err != nil {
		return err
	}
	if t.Repeat, err = f.duration("repeat", 0, 1000*time.Hour); err != nil {
		return err
	}
	if err := t.Validate(); err != nil {
		return usageError{err}
	}
	o.track = t
	sel := &o.selection
	if sel.EverySocket, err = f.bool("all"); err != nil {
		return err
	}
	if v, from := f.get("events"); v != "" {
		if sel.Kinds, err = pipeline.ParseKinds(v); err != nil {
			return f.errorf(from, v, "%v", err)
		}
		if sel.Kinds.Has(events.KindCloseWait) && !sel.EverySocket {
			return f.errorf(from, v, "close_wait events are written for every socket only: add --all")
		}
	}
	if sel.MinLatency, err = f.duration("min-latency", 0, 1000*time.Hour); err != nil {
		return err
	}
	if sel.MinLatency > 0 && sel.EverySocket {
		return usagef("--min-latency has no effect with --all, which writes every close")
	}
	if sel.PIDs, err = f.pids("pid"); err != nil {
		return err
	}
	if sel.Comms, err = f.comms("comm"); err != nil {
		return err
	}
	if o.statusInterval, err = f.duration("status-interval", 0, 24*time.Hour); err != nil {
		return err
	}
	if o.statusInterval > 0 && o.statusInterval < time.Second {
		v, from := f.get("status-interval")
		return f.errorf(from, v, "want 0 (off) or at least 1s")
	}
	if o.summaryInterval, err = f.duration("summary-interval", 0, 24*time.Hour); err != nil {
		return err
	}
	if o.summaryInterval > 0 && o.summaryInterval < time.Second {
		v, from := f.get("summary-interval")
		return f.errorf(from, v, "want 0 (off) or at least 1s")
	}
	aggs, err := f.uint("max-aggregates", 2, 1<<20)
	if err != nil {
		return err
	}
	o.tracer.MaxAggregates = uint32(aggs)
	if o.tracer.PinTable, err = f.bool("pin-table"); err != nil {
		return err
	}
	if v, from := f.get("pin-dir"); !filepath.IsAbs(v) {
		return f.errorf(from, v, "want an absolute path on a bpf filesystem")
	} else {
		o.tracer.PinDir = filepath.Clean(v)
	}
	if o.serve, err = parseServe(f); err != nil {
		return err
	}
	if o.heal, err = parseHeal(f, t.Threshold); err != nil {
		return err
	}
	o.tracer.EmitAll = sel.EverySocket
	// The kernel sends the close of a socket that may have been reported
	// stuck, and of one past the latency floor.
	o.tracer.EmitFloor = t.Threshold
	if sel.MinLatency > 0 {
		o.tracer.EmitFloor = min(t.Threshold, sel.MinLatency)
	}
	return nil
}

// parseHeal reads the --destroy-* flags. The policy needs a selector:
// destroying every stuck socket of a node is not a default anyone wants.
func parseHeal(f flags, threshold time.Duration) (healOptions, error) {
	var h healOptions
	var err error
	if h.after, err = f.duration("destroy-after", 0, 100000*time.Hour); err != nil {
		return h, err
	}
	v, from := f.get("destroy-rate")
	if h.rate, err = strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil || !(h.rate > 0) || h.rate > 100000 {
		return h, f.errorf(from, v, "want a number of sockets per second above 0, at most 100000")
	}
	if h.dryRun, err = f.bool("destroy-dry-run"); err != nil {
		return h, err
	}
	ports, _, err := f.ports("destroy-port")
	if err != nil {
		return h, err
	}
	pids, err := f.pids("destroy-pid")
	if err != nil {
		return h, err
	}
	comms, err := f.comms("destroy-comm")
	if err != nil {
		return h, err
	}
	h.sel.Ports, h.sel.PIDs, h.sel.Comms = setOf(ports), setOf(pids), setOf(comms)
	if v, from := f.get("destroy-cgroup"); v != "" {
		sel, err := f.cgroup(v, from)
		if err != nil {
			return h, err
		}
		h.sel.Cgroup = sel.Path
	}
	switch {
	case h.after == 0 && !h.sel.Empty():
		return h, usagef("the --destroy-* selectors need --destroy-after DURATION")
	case h.after == 0:
		return h, nil
	case h.sel.Empty():
		return h, usagef("--destroy-after needs at least one selector (--destroy-port, --destroy-pid, --destroy-comm or --destroy-cgroup): it never destroys every stuck socket of the node")
	case h.after < threshold:
		return h, usagef("--destroy-after %v is below --threshold %v: sockets are followed from the threshold on", h.after, threshold)
	}
	return h, nil
}

// terminalWidth reports whether w is a terminal, and its width if known.
func terminalWidth(w io.Writer) (int, bool) {
	f, ok := w.(*os.File)
	if !ok {
		return 0, false
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return 0, false
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 {
		return 0, true
	}
	return int(ws.Col), true
}

func versionString() string {
	v, ebpfVersion := version, "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		for _, dep := range info.Deps {
			if dep.Path == "github.com/cilium/ebpf" {
				ebpfVersion = dep.Version
			}
		}
	}
	if v == "" {
		v = "dev"
	}
	return fmt.Sprintf("tcptrace %s (%s, cilium/ebpf %s, %s/%s)",
		v, runtime.Version(), ebpfVersion, runtime.GOOS, runtime.GOARCH)
}

// newLogger writes logfmt lines to stderr with control characters escaped.
func newLogger(stderr io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}
