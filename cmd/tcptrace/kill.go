package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/cgroup"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/output"
	"github.com/tcptrace/tcptrace/owner"
	"github.com/tcptrace/tcptrace/server"
	"github.com/tcptrace/tcptrace/tracer"
)

// killEnv names kill's environment variables: TCPTRACE_KILL_*, so that the
// variables that configure a DaemonSet's closewait never select sockets
// to destroy in a kill run inside its container.
var killEnv = map[string]string{
	"older-than":     "TCPTRACE_KILL_OLDER_THAN",
	"any-age":        "TCPTRACE_KILL_ANY_AGE",
	"port":           "TCPTRACE_KILL_PORTS",
	"pid":            "TCPTRACE_KILL_PIDS",
	"cgroup":         "TCPTRACE_KILL_CGROUP",
	"container":      "TCPTRACE_KILL_CONTAINER",
	"netns":          "TCPTRACE_KILL_NETNS",
	"from":           "TCPTRACE_KILL_FROM",
	"dry-run":        "TCPTRACE_KILL_DRY_RUN",
	"include-queued": "TCPTRACE_KILL_INCLUDE_QUEUED",
	"yes":            "TCPTRACE_KILL_YES",
	"output":         "TCPTRACE_KILL_OUTPUT",
}

const (
	catKillSelect = "Which sockets (all given must match):"
	catKillSafety = "Safety:"
)

func killFlags() []cli.Flag {
	u := func(name, text string) string { return text + " [$" + killEnv[name] + "]" }
	return []cli.Flag{
		&cli.StringFlag{Name: "older-than", Category: catKillSelect, Usage: u("older-than", "required: only sockets in CLOSE-WAIT at least this long, e.g. 10m")},
		&cli.BoolFlag{Name: "any-age", Category: catKillSelect, Usage: u("any-age", "also sockets whose age is unknown (no --from, or in CLOSE-WAIT since before the running tcptrace)")},
		&cli.StringSliceFlag{Name: "port", Aliases: []string{"p"}, Category: catKillSelect, Usage: u("port", "local or remote port (repeatable)")},
		&cli.StringSliceFlag{Name: "pid", Category: catKillSelect, Usage: u("pid", "held by this process (repeatable)")},
		&cli.StringFlag{Name: "cgroup", Category: catKillSelect, Usage: u("cgroup", "of this cgroup v2 (a path) or below it")},
		&cli.StringFlag{Name: "container", Category: catKillSelect, Usage: u("container", "of this container (an id of 12 to 64 hex digits)")},
		&cli.StringFlag{Name: "netns", Category: catKillSelect, Usage: u("netns", "of this network namespace, by inode")},
		&cli.StringFlag{Name: "from", Category: catKillSelect, Usage: u("from", "a running tcptrace closewait --listen (host:port or URL): the sockets' ages come from it")},
		&cli.BoolFlag{Name: "dry-run", Category: catKillSafety, Usage: u("dry-run", "only list what would be destroyed")},
		&cli.BoolFlag{Name: "include-queued", Category: catKillSafety, Usage: u("include-queued",
			"also destroy sockets waiting in a listener's accept queue (held by no process): that frees nothing, as the listener does not accept, and the application gets them aborted when it does")},
		&cli.BoolFlag{Name: "yes", Aliases: []string{"y"}, Category: catKillSafety, Usage: u("yes", "destroy without asking (needed when stdin is not a terminal)")},
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: string(output.FormatAuto), Category: catOutput,
			Usage: u("output", "json, table, or auto: a table on a terminal, JSON otherwise")},
	}
}

// killOptions are kill's validated flags.
type killOptions struct {
	olderThan      time.Duration
	anyAge, dryRun bool
	includeQueued  bool
	yes            bool
	ports          map[uint16]bool
	pids           map[int]bool
	cgroup         *cgroup.Selected
	netns          uint32
	from           string
	format         output.Format
	width          int
}

func parseKill(c *cli.Context) (killOptions, error) {
	var o killOptions
	if c.Args().Len() > 0 {
		return o, usagef("unexpected argument %q", c.Args().First())
	}
	f := flags{c: c, lookup: os.LookupEnv, env: killEnv}
	v, from := f.get("older-than")
	if v == "" {
		return o, usagef("--older-than is required: how long a socket must have been in CLOSE-WAIT to be destroyed, e.g. --older-than 10m")
	}
	var err error
	if o.olderThan, err = f.duration("older-than", 0, 100000*time.Hour); err != nil {
		return o, err
	}
	_ = from
	if o.anyAge, err = f.bool("any-age"); err != nil {
		return o, err
	}
	if o.dryRun, err = f.bool("dry-run"); err != nil {
		return o, err
	}
	if o.includeQueued, err = f.bool("include-queued"); err != nil {
		return o, err
	}
	if o.yes, err = f.bool("yes"); err != nil {
		return o, err
	}
	ports, _, err := f.ports("port")
	if err != nil {
		return o, err
	}
	pids, err := f.pids("pid")
	if err != nil {
		return o, err
	}
	o.ports, o.pids = setOf(ports), setOf(pids)
	cg, cgFrom := f.get("cgroup")
	ct, ctFrom := f.get("container")
	if cg != "" && ct != "" {
		return o, usagef("give --cgroup or --container, not both")
	}
	if ct != "" {
		if len(ct) < 12 || len(ct) > 64 || strings.Trim(strings.ToLower(ct), "0123456789abcdef") != "" {
			return o, f.errorf(ctFrom, ct, "want a container id of 12 to 64 hex digits")
		}
		cg, cgFrom = ct, ctFrom
	}
	if cg != "" {
		sel, err := f.cgroup(cg, cgFrom)
		if err != nil {
			return o, err
		}
		o.cgroup = &sel
	}
	if o.netns, err = f.netns("netns"); err != nil {
		return o, err
	}
	o.from, _ = f.get("from")
	out, from := f.get("output")
	if o.format, err = output.ParseFormat(out); err != nil {
		return o, f.errorf(from, out, "want auto, json or table")
	}
	width, isTTY := terminalWidth(c.App.Writer)
	if o.format == output.FormatAuto {
		o.format = output.FormatJSON
		if isTTY {
			o.format = output.FormatTable
		}
	}
	if o.format == output.FormatTable {
		o.width = width
	}
	if o.from == "" && !o.anyAge {
		return o, usagef("without --from the sockets' ages are unknown (a fresh listing cannot tell when the peer closed), so --older-than cannot be honoured: " +
			"give --from ADDR of a running tcptrace closewait --listen, or --any-age to destroy whatever their age")
	}
	return o, nil
}

// candidate is a socket that kill may destroy.
type candidate struct {
	tracer.CloseWaitSocket
	ev events.Event
}

func runKill(c *cli.Context) error {
	o, err := parseKill(c)
	if err != nil {
		return err
	}
	log := newLogger(c.App.ErrWriter, 0)
	if err := tracer.CheckPrivileges(); err != nil {
		return err
	}
	var ages map[ageKey]ageOf
	if o.from != "" {
		if ages, err = fetchAges(c.Context, o.from); err != nil {
			return err
		}
	}
	sockets, err := tracer.ListCloseWaitSockets(o.netns)
	if err != nil {
		if len(sockets) == 0 {
			return fmt.Errorf("list sockets in CLOSE-WAIT: %w", err)
		}
		log.Warn("some network namespaces could not be listed: their sockets are left alone", "error", err)
	}
	var paths *cgroup.Resolver
	if o.cgroup != nil {
		root, _ := cgroup.UnifiedRoot()
		paths = cgroup.NewResolver(root, time.Second)
	}
	owners := owner.NewResolver(owner.Config{})
	now := time.Now()
	var selected, queued []candidate
	var listeners map[uint32][]events.Listener
	for _, s := range sockets {
		if o.netns != 0 && s.NetNS != o.netns {
			continue
		}
		if o.ports != nil && !o.ports[s.Local.Port()] && !o.ports[s.Remote.Port()] {
			continue
		}
		if o.cgroup != nil {
			p, ok := paths.Path(s.CgroupID)
			if !ok || !cgroup.Within(p, o.cgroup.Path) {
				continue
			}
		}
		cand := candidate{CloseWaitSocket: s}
		ev := &cand.ev
		*ev = events.Event{
			Time: now, Sock: s.Cookie, Family: s.Family, LocalAddr: s.Local.Addr(), LocalPort: s.Local.Port(),
			RemoteAddr: s.Remote.Addr(), RemotePort: s.Remote.Port(), NetNS: s.NetNS, CgroupID: s.CgroupID, Inode: s.Inode,
		}
		if a, ok := ages[keyOf(s.NetNS, s.Local, s.Remote)]; ok && a.known {
			ev.AgeKnown, ev.AgeNS = true, now.Sub(a.fin).Nanoseconds()
		}
		if ev.AgeKnown && time.Duration(ev.AgeNS) < o.olderThan {
			continue
		}
		if !ev.AgeKnown && !o.anyAge {
			continue
		}
		if s.Inode == 0 {
			// Not accepted yet: the listener's holders are the culprits.
			ev.OwnerSource = events.OwnerNoFile
			if listeners == nil {
				if listeners, err = tracer.ListListeners(o.netns); err != nil {
					log.Warn("list listening sockets", "error", err)
				}
			}
			if l, ok := tracer.FindListener(listeners[s.NetNS], s.Local); ok {
				l.Owners, _ = owners.Resolve(l.Inode, uint64(s.NetNS), nil)
				ev.Listener = &l
			}
		} else {
			found, _ := owners.Resolve(s.Inode, uint64(s.NetNS), nil)
			ev.Owners, ev.OwnerSource = found, events.OwnerUnresolved
			if len(found) > 0 {
				ev.OwnerSource = events.OwnerProc
			}
		}
		if o.pids != nil && !heldBy(ev.Owners, o.pids) && (ev.Listener == nil || !heldBy(ev.Listener.Owners, o.pids)) {
			continue
		}
		if ctx := cgroupContext(paths, s.CgroupID); ctx != (cgroup.Context{}) {
			ev.ContainerID, ev.PodUID = ctx.ContainerID, ctx.PodUID
		}
		if s.Inode == 0 && !o.includeQueued {
			queued = append(queued, cand)
			continue
		}
		selected = append(selected, cand)
	}
	out := output.New(c.App.Writer, o.format, o.width)
	out.Expect(events.KindDestroyed, events.KindNotDestroyed)
	report := func(ev *events.Event) error {
		if err := out.Write(ev); err != nil {
			return err
		}
		return out.Flush()
	}
	for i := range queued {
		ev := queued[i].ev
		ev.Kind, ev.Reason = events.KindNotDestroyed, "in_accept_queue"
		if err := report(&ev); err != nil {
			return err
		}
	}
	warnQueued(log, queued, o.includeQueued)
	if o.includeQueued {
		var n int
		for _, s := range selected {
			if s.Inode == 0 {
				n++
			}
		}
		if n > 0 {
			log.Warn("--include-queued: destroying sockets that wait in an accept queue frees nothing while the listener does not accept, "+
				"and the application gets them aborted when it does", "queued", n)
		}
	}
	if len(selected) == 0 {
		log.Info("no socket in CLOSE-WAIT matches", "listed", len(sockets), "in_accept_queue", len(queued))
		return nil
	}
	if o.dryRun || !o.yes {
		reason := "awaiting_confirmation"
		if o.dryRun {
			reason = "dry_run"
		}
		for i := range selected {
			ev := selected[i].ev
			ev.Kind, ev.Reason = events.KindNotDestroyed, reason
			if err := report(&ev); err != nil {
				return err
			}
		}
		if o.dryRun {
			log.Info("dry run: nothing destroyed", "would_destroy", len(selected))
			return nil
		}
		if !isTerminal(os.Stdin) {
			return usagef("%d sockets match; stdin is not a terminal to confirm on: give --yes to destroy them, or --dry-run to list only", len(selected))
		}
		fmt.Fprintf(c.App.ErrWriter, "Destroy these %d sockets? Their holders get an error on them. [y/N] ", len(selected))
		answer, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			log.Info("not confirmed: nothing destroyed")
			return nil
		}
	}
	d, err := tracer.NewDestroyer()
	if err != nil {
		return err
	}
	defer d.Close()
	targets := make([]tracer.CloseWaitSocket, len(selected))
	for i, s := range selected {
		targets[i] = s.CloseWaitSocket
	}
	results, destroyErr := d.Destroy(targets)
	var destroyed, left, failed int
	var writeErr error
	for i := range selected {
		ev := selected[i].ev
		ev.Time = time.Now()
		switch r := results[selected[i].Cookie]; r {
		case tracer.Destroyed:
			ev.Kind, ev.Method = events.KindDestroyed, d.Method()
			if ev.AgeKnown {
				ev.AgeNS = ev.Time.Sub(now).Nanoseconds() + ev.AgeNS
			}
			destroyed++
		case tracer.LeftCloseWait, tracer.NotFound:
			ev.Kind, ev.Reason = events.KindNotDestroyed, r.Reason()
			left++
		default:
			ev.Kind, ev.Reason = events.KindNotDestroyed, r.Reason()
			failed++
		}
		// The sockets are destroyed already: an output that fails (a full
		// disk, a reader gone) must not hide how many, so go on counting.
		if err := report(&ev); err != nil && writeErr == nil {
			writeErr = err
		}
	}
	log.Info("done", "destroyed", destroyed, "left_alone", left, "failed", failed, "method", d.Method())
	if writeErr != nil {
		return fmt.Errorf("write output: %w; of %d sockets, %d destroyed, %d left alone, %d failed", writeErr, len(selected), destroyed, left, failed)
	}
	if destroyErr != nil {
		return destroyErr
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d sockets could not be destroyed", failed, len(selected))
	}
	return nil
}

// warnQueued says, one line per listener, that the sockets waiting in
// its accept queue were left alone, and names the listener that does not
// accept: the real culprit.
func warnQueued(log *slog.Logger, queued []candidate, included bool) {
	if included || len(queued) == 0 {
		return
	}
	type group struct {
		l *events.Listener
		n int
	}
	var order []string
	groups := map[string]*group{}
	for _, c := range queued {
		k := "unknown"
		if l := c.ev.Listener; l != nil {
			k = fmt.Sprintf("%d %s", c.NetNS, l.Local)
		}
		g := groups[k]
		if g == nil {
			g = &group{l: c.ev.Listener}
			groups[k] = g
			order = append(order, k)
		}
		g.n++
	}
	for _, k := range order {
		g := groups[k]
		attrs := []any{"sockets", g.n}
		if l := g.l; l != nil {
			attrs = append(attrs, "listener", l.Local.String(), "queue", l.Queue, "backlog", l.Backlog)
			for _, o := range l.Owners {
				attrs = append(attrs, "pid", o.PID, "comm", o.Comm, "fd", o.FD)
				break
			}
		}
		log.Warn("left alone: these sockets wait in a listener's accept queue, held by no process; destroying them frees "+
			"nothing, the listener that does not accept is the problem (--include-queued destroys them anyway)", attrs...)
	}
}

func heldBy(owners []events.Owner, pids map[int]bool) bool {
	for _, o := range owners {
		if pids[o.PID] {
			return true
		}
	}
	return false
}

func cgroupContext(paths *cgroup.Resolver, id uint64) cgroup.Context {
	if paths == nil || id == 0 {
		return cgroup.Context{}
	}
	p, ok := paths.Path(id)
	if !ok {
		return cgroup.Context{}
	}
	return cgroup.ParsePath(p)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// ageKey identifies a socket across the running tcptrace's table and a
// fresh listing: its sock id is the kernel's cookie only on some kernels.
type ageKey struct {
	netns         uint32
	local, remote netip.AddrPort
}

// keyOf makes an ageKey, IPv4 addresses unmapped on both sides.
func keyOf(netns uint32, local, remote netip.AddrPort) ageKey {
	unmap := func(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
	return ageKey{netns, unmap(local), unmap(remote)}
}

type ageOf struct {
	fin   time.Time
	known bool
}

// fetchAges reads a running tcptrace's CLOSE-WAIT table (its --listen
// address, or a URL): the FIN time of each socket.
func fetchAges(ctx context.Context, addr string) (map[ageKey]ageOf, error) {
	ages := make(map[ageKey]ageOf)
	err := getFrom(ctx, addr, server.PathCloseWait, 30*time.Second, func(url string, body io.Reader) error {
		return readAges(url, body, ages)
	})
	return ages, err
}

// readAges reads close_wait events, one per line, into ages.
func readAges(url string, body io.Reader, ages map[ageKey]ageOf) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), events.MaxLine+1)
	for sc.Scan() {
		var ev struct {
			Time       time.Time `json:"time"`
			Event      string    `json:"event"`
			LocalAddr  string    `json:"local_addr"`
			LocalPort  uint16    `json:"local_port"`
			RemoteAddr string    `json:"remote_addr"`
			RemotePort uint16    `json:"remote_port"`
			NetNS      uint32    `json:"netns"`
			AgeKnown   bool      `json:"age_known"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.Event != "close_wait" {
			return fmt.Errorf("--from %s: not a tcptrace CLOSE-WAIT table: %q", url, truncateLine(sc.Text()))
		}
		local, err1 := netip.ParseAddr(ev.LocalAddr)
		remote, err2 := netip.ParseAddr(ev.RemoteAddr)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("--from %s: %v", url, err)
		}
		ages[keyOf(ev.NetNS, netip.AddrPortFrom(local, ev.LocalPort), netip.AddrPortFrom(remote, ev.RemotePort))] = ageOf{ev.Time, ev.AgeKnown}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("--from %s: %w", url, err)
	}
	return nil
}

func truncateLine(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}
