package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/output"
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
			"Every flag can also be set with the environment variable shown.",
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
				Usage: "report the application close latency after the peer's FIN, and sockets stuck in CLOSE-WAIT",
				Flags: append(commonFlags(),
					&cli.DurationFlag{Name: "threshold", Value: 30 * time.Second, EnvVars: []string{"TCPTRACE_THRESHOLD"},
						Usage: "report a socket as stuck once it has been in CLOSE-WAIT this long"},
					&cli.DurationFlag{Name: "repeat", Value: 0, EnvVars: []string{"TCPTRACE_REPEAT"},
						Usage: "report a stuck socket again at this interval; 0 reports it once"},
				),
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

func commonFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntSliceFlag{Name: "port", Aliases: []string{"p"}, EnvVars: []string{"TCPTRACE_PORTS"},
			Usage: "only sockets with this local or remote port (repeat, or comma-separate in the env var)"},
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: string(output.FormatAuto), EnvVars: []string{"TCPTRACE_OUTPUT"},
			Usage: "json, table, or auto: a table on a terminal, JSON lines otherwise"},
		&cli.StringFlag{Name: "attach", Value: string(tracer.AttachAuto), EnvVars: []string{"TCPTRACE_ATTACH"},
			Usage: "kernel hook: auto, tp_btf or tracepoint (auto tries tp_btf, then the tracepoint)"},
		&cli.UintFlag{Name: "max-tracked", Value: tracer.DefaultMaxTracked, EnvVars: []string{"TCPTRACE_MAX_TRACKED"},
			Usage: "bound on sockets tracked at once, in the kernel and in tcptrace; excess is counted as lost"},
		&cli.UintFlag{Name: "ring-buffer-size", Value: tracer.DefaultRingBufBytes, EnvVars: []string{"TCPTRACE_RING_BUFFER_SIZE"},
			Usage: "kernel ring buffer size in bytes, a power of two"},
		&cli.DurationFlag{Name: "flush-interval", Value: tracer.DefaultFlushInterval, EnvVars: []string{"TCPTRACE_FLUSH_INTERVAL"},
			Usage: "longest an event waits in the kernel before tcptrace reads it"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"TCPTRACE_LOG_LEVEL"},
			Usage: "stderr log level: debug, info, warn or error"},
	}
}

// options are the validated flags.
type options struct {
	tracer tracer.Config
	track  track.Config
	format output.Format
	level  slog.Level
}

const maxTrackedLimit = 1 << 24

func parseOptions(c *cli.Context, mode tracer.Mode) (options, error) {
	var o options
	if c.Args().Len() > 0 {
		return o, usagef("unexpected argument %q", c.Args().First())
	}
	var ports []uint16
	for _, p := range c.IntSlice("port") {
		if p < 1 || p > 65535 {
			return o, usagef("--port %d is out of range 1-65535", p)
		}
		ports = append(ports, uint16(p))
	}
	format, err := output.ParseFormat(c.String("output"))
	if err != nil {
		return o, usagef("--output: %v", err)
	}
	if format == output.FormatAuto {
		format = output.FormatJSON
		if isTerminal(c.App.Writer) {
			format = output.FormatTable
		}
	}
	attach := tracer.Attach(c.String("attach"))
	if attach != tracer.AttachAuto && attach != tracer.AttachTPBTF && attach != tracer.AttachTracepoint {
		return o, usagef("--attach %q: want auto, tp_btf or tracepoint", attach)
	}
	maxTracked := c.Uint("max-tracked")
	if maxTracked < 1 || maxTracked > maxTrackedLimit {
		return o, usagef("--max-tracked %d is out of range 1-%d", maxTracked, maxTrackedLimit)
	}
	ring := c.Uint("ring-buffer-size")
	page := uint(os.Getpagesize())
	if ring < page || ring > 1<<30 || ring&(ring-1) != 0 {
		return o, usagef("--ring-buffer-size %d must be a power of two from %d to %d", ring, page, 1<<30)
	}
	flush := c.Duration("flush-interval")
	if flush < time.Millisecond || flush > 10*time.Second {
		return o, usagef("--flush-interval %v is out of range 1ms-10s", flush)
	}
	if err := o.level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return o, usagef("--log-level %q: want debug, info, warn or error", c.String("log-level"))
	}
	o.format = format
	o.tracer = tracer.Config{
		Mode:          mode,
		Ports:         ports,
		Attach:        attach,
		MaxTracked:    uint32(maxTracked),
		RingBufBytes:  uint32(ring),
		FlushInterval: flush,
	}
	if mode == tracer.ModeCloseWait {
		o.track = track.Config{
			Threshold:  c.Duration("threshold"),
			Repeat:     c.Duration("repeat"),
			MaxSockets: int(maxTracked),
		}
		if err := o.track.Validate(); err != nil {
			return o, usageError{err}
		}
	}
	return o, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
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
