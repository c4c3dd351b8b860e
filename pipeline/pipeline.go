package pipeline

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
	"github.com/tcptrace/tcptrace/track"
)

// Source is where events come from: the tracer, or a fake in tests.
type Source interface {
	// Events delivers batches of events, in order; hand each back with
	// Recycle. It is closed after Stop once drained, or on a read error.
	Events() <-chan []events.Event
	Recycle(batch []events.Event)
	// Stop ends production; Events is closed once drained.
	Stop()
	// Err says why Events was closed, nil after Stop.
	Err() error
	// Lost returns cumulative drop counts by cause.
	Lost() (events.LostCounts, error)
	// Clock converts CLOCK_BOOTTIME to wall time.
	Clock() bootclock.Clock

	// The rest is used in closewait mode only.

	// ScanCloseWait calls due with each socket in the kernel's CLOSE-WAIT
	// table whose FIN is at or before dueBoot, as a close_wait event,
	// unless known says it is known already, and returns how many sockets
	// the table holds.
	ScanCloseWait(dueBoot int64, known func(sock uint64) bool, due func(ev *events.Event)) (int, error)
	// ListCloseWait calls each with the sock id of every socket in the
	// kernel's CLOSE-WAIT table.
	ListCloseWait(each func(sock uint64)) error
	// InCloseWait reports whether a kernel-tracked socket is still in the
	// table for the same episode.
	InCloseWait(ev *events.Event) (bool, error)
	// Snapshot lists the sockets already in CLOSE-WAIT at start-up and
	// calls found with those not tracked before.
	Snapshot(found func(ev *events.Event)) error
	// Inodes returns the current inode of each socket in CLOSE-WAIT in a
	// network namespace, by sock id.
	Inodes(netns uint32) (map[uint64]uint64, error)
	// Aggregates calls fn with each of the kernel's aggregates.
	Aggregates(fn func(a *events.Aggregate)) error
}

// Diagnosing is implemented by a Source that can say why a socket stays in
// CLOSE-WAIT, read from the socket itself (the tracer, through sock_diag).
// Diagnoser returns diagnose, which sets a stuck report's diagnosis fields
// (events.Event.DiagKnown and the rest) when it can, with one round trip to
// the kernel, and release, which frees what diagnose keeps between calls:
// it is called after each batch of reports.
type Diagnosing interface {
	Diagnoser() (diagnose func(ev *events.Event), release func())
}

// ListenerFinding is implemented by a Source that can name the listening
// socket a socket no file refers to waits in (the tracer, through
// sock_diag): its holders are the ones that do not accept.
type ListenerFinding interface {
	Listener(netns uint32, local netip.AddrPort) (events.Listener, bool)
}

// Attributor fills in who holds a socket and which container it is in
// (package attribute).
type Attributor interface {
	// Socket sets the container context from the socket's cgroup.
	Socket(ev *events.Event)
	// CachedOwners sets owners known without scanning /proc.
	CachedOwners(ev *events.Event)
	// Owners sets owners, scanning /proc within its budget; retry > 0
	// says none was found and a scan may run after retry.
	Owners(ev *events.Event) (retry time.Duration)
	// Closed forgets a socket that left CLOSE-WAIT.
	Closed(ev *events.Event)
}

// Sink consumes events. Write and Flush are called from the loop's
// goroutine; ev is reused after Write returns.
type Sink interface {
	Write(ev *events.Event) error
	// Flush pushes out what is buffered: called when the loop is idle.
	Flush() error
}

// StatusSink is a Sink that also shows the periodic Status.
type StatusSink interface {
	WriteStatus(st *Status) error
}

// Status says that tcptrace is working when nothing is reported.
type Status struct {
	// InCloseWait is the number of sockets in CLOSE-WAIT now.
	InCloseWait uint64
	// Stuck is the number of them reported stuck.
	Stuck int
	// Closes is how many sockets the applications closed after the peer's
	// FIN during Interval.
	Closes   uint64
	Interval time.Duration
	// P99 is the 99th percentile FIN-to-close latency over Interval (the
	// upper bound of its log2 bucket); valid when HasP99.
	P99    time.Duration
	HasP99 bool
}

// Config sets up a Pipeline.
type Config struct {
	// CloseWait selects closewait mode; otherwise events go straight to
	// the sinks (trace mode).
	CloseWait bool
	// Track configures the tracker (closewait mode).
	Track track.Config
	// EverySocket says the source sends a record for every socket entering
	// and leaving CLOSE-WAIT.
	EverySocket bool
	// StatusInterval is how often StatusSinks get a Status; 0: never.
	StatusInterval time.Duration
	// SummaryInterval is how often Summary's events go to the sinks
	// (closewait mode); 0: never.
	SummaryInterval time.Duration
	Summary         func() ([]events.Event, error)
	// ListenInterval is how often the listeners' drops are looked at for
	// listen_drops events, when the source lists listeners
	// (ListenerWatching); 0: never.
	ListenInterval time.Duration
	// Heal, when set, acts on the tracked sockets every HealInterval
	// (closewait --destroy-after) and its events go to the sinks.
	Heal         Healer
	HealInterval time.Duration
	Logger       *slog.Logger
}

// Healer destroys tracked sockets by a policy (package heal).
type Healer interface {
	Heal(socks iter.Seq[track.Info]) []events.Event
}

// Intervals of the loop's housekeeping.
const (
	// The loop's housekeeping runs on a tick of the scan interval, within
	// these bounds: output is flushed whenever the queue is empty, so the
	// tick matters only for a stream that never lets it empty, and a quiet
	// tcptrace wakes up rarely.
	minTick = 100 * time.Millisecond
	maxTick = time.Second
	// lostInterval is how often drop counters are read and reported.
	lostInterval = time.Second
	// rescanMaxAge is how long a listing of a namespace's sockets answers
	// for all the stuck reports that need it.
	rescanMaxAge = time.Second
	// Bounds of the CLOSE-WAIT table scan interval (see doc.go).
	minScanInterval = 50 * time.Millisecond
	maxScanInterval = 5 * time.Second
	scanCostShare   = 50
	// DefaultMaxOwnerWait is the default Track.MaxOwnerWait.
	DefaultMaxOwnerWait = 5 * time.Second
)

// Pipeline is the event loop. Run it once.
type Pipeline struct {
	cfg   Config
	src   Source
	attr  Attributor
	track *track.Tracker // nil in trace mode
	sinks []Sink
	log   *slog.Logger

	lost events.LostCounts // cumulative, as last reported
	// progress is when the source last said it had delivered everything
	// (Unix ns): the reader and the loop are alive.
	progress atomic.Int64
	// lostShared is lost for other goroutines (metrics).
	lostMu     sync.Mutex
	lostShared events.LostCounts
	sinkErr    error // a sink failed: stop writing
	fatal      error

	// The kernel's CLOSE-WAIT table, as last read.
	lastScan     time.Time
	scanEvery    time.Duration
	scans        atomic.Uint64
	scansSkipped atomic.Uint64 // nothing in CLOSE-WAIT was untracked
	scanCost     time.Duration // the longest read

	// Aggregate totals at the last status, for rates.
	lastStatus time.Time
	prevCloses uint64
	prevHist   [events.HistBuckets]uint64

	// Recent socket listings by network namespace.
	rescans map[uint32]rescan

	// The listeners' drop counts at the last look (watchListeners).
	listens      map[listenKey]listenState
	lastListen   time.Time
	pendingDrops []pendingDrop

	// Sockets the tracker had no room for, by sock id, until they close.
	refused map[uint64]struct{}

	// Why stuck sockets stay, when the source can tell (Diagnosing).
	diagnose    func(ev *events.Event)
	releaseDiag func()

	// Reconciling with the kernel table after records were dropped:
	// needSweep asks for a whole read of the table; sweep holds the tracked
	// sockets it did not find, to check once every record up to sweepAt
	// has been handled.
	needSweep bool
	sweep     []uint64
	sweepAt   int64
}

type rescan struct {
	at     time.Time
	inodes map[uint64]uint64
}

// New returns a pipeline. cfg.Track must be valid in closewait mode.
func New(cfg Config, src Source, attr Attributor, sinks ...Sink) *Pipeline {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Pipeline{cfg: cfg, src: src, attr: attr, sinks: sinks, log: cfg.Logger, scanEvery: minScanInterval,
		refused: make(map[uint64]struct{})}
	if cfg.CloseWait {
		p.track = track.New(cfg.Track, src.Clock())
		if d, ok := src.(Diagnosing); ok {
			p.diagnose, p.releaseDiag = d.Diagnoser()
		}
	}
	return p
}

// LastProgress is when the loop last handled the source's word that every
// event up to then was delivered (the tracer's ring buffer read empty):
// zero before the first. Safe to call from any goroutine; for readiness.
func (p *Pipeline) LastProgress() time.Time {
	if ns := p.progress.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Tracker gives read access to the sockets in CLOSE-WAIT that user space
// tracks (closewait mode; nil otherwise): those reported stuck, and with
// EverySocket all of them.
func (p *Pipeline) Tracker() *track.Tracker { return p.track }

// Snapshot takes in the sockets that were in CLOSE-WAIT before tcptrace
// started, in every network namespace (closewait mode). With EverySocket
// each is reported as a close_wait with age_known false; otherwise the
// kernel table now holds them, and they are reported once stuck like any
// other. It returns how many it found.
func (p *Pipeline) Snapshot() (int, error) {
	n := 0
	err := p.src.Snapshot(func(ev *events.Event) {
		n++
		if !p.cfg.EverySocket && ev.KernelTracked {
			return // the table scan finds it once it is due
		}
		if p.track.Has(ev.Sock) {
			return // its close_wait event got here first
		}
		p.attr.Socket(ev)
		p.attr.Owners(ev) // one scan answers for all of them
		p.track.Observe(ev, p.emit)
	})
	return n, err
}

// Run moves events from the source to the sinks until ctx is done or a
// sink's output is closed, then drains what the source still holds.
func (p *Pipeline) Run(ctx context.Context) error {
	if p.track != nil {
		p.scan()
		p.resetStatus()
	}
	tickEvery := p.tickInterval()
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	now := time.Now()
	lastLost := now
	lastSummary, lastHeal := now, now
	p.lastStatus = now
	if p.cfg.ListenInterval > 0 {
		p.watchListeners(now)
	}
	done := ctx.Done()
	evs := p.src.Events()
	var stoppedAt int64
	stop := func() {
		// Detach, then deliver what the ring buffer still holds.
		stoppedAt = bootclock.Now()
		p.src.Stop()
		done = nil
	}
	for p.fatal == nil {
		if p.sinkErr != nil && stoppedAt == 0 {
			stop()
		}
		select {
		case <-done:
			stop()
		case batch, ok := <-evs:
			if !ok {
				// Everything the kernel produced before the detach has been
				// handled; after it, nothing is known.
				if stoppedAt != 0 {
					p.expire(stoppedAt)
				}
				p.reportLost()
				p.flush()
				return oneline.Join(p.fatal, p.src.Err(), p.runErr())
			}
			for i := range batch {
				p.handle(&batch[i])
			}
			p.src.Recycle(batch)
			if len(evs) == 0 {
				p.flush()
			}
		case <-tick.C:
			now := time.Now()
			// Half a tick early rather than a whole tick late: the tick and
			// the intervals drift against each other.
			due := func(last time.Time, every time.Duration) bool { return now.Sub(last) >= every-tickEvery/2 }
			if p.track != nil && p.needSweep && len(p.sweep) == 0 {
				p.reconcile()
			}
			if p.track != nil && due(p.lastScan, p.scanEvery) {
				p.scan()
				if t := p.tickInterval(); t != tickEvery {
					tickEvery = t
					tick.Reset(t)
				}
			}
			if due(lastLost, lostInterval) {
				p.reportLost()
				lastLost = now
			}
			if p.cfg.StatusInterval > 0 && due(p.lastStatus, p.cfg.StatusInterval) {
				p.status(now)
			}
			if p.cfg.ListenInterval > 0 && due(p.lastListen, p.cfg.ListenInterval) {
				p.watchListeners(now)
			} else if len(p.pendingDrops) > 0 {
				p.retryListenDrops(now)
			}
			if p.cfg.Heal != nil && p.track != nil && due(lastHeal, p.cfg.HealInterval) {
				evs := p.cfg.Heal.Heal(p.track.All())
				for i := range evs {
					p.emit(&evs[i])
				}
				lastHeal = now
			}
			if p.cfg.SummaryInterval > 0 && p.cfg.Summary != nil && due(lastSummary, p.cfg.SummaryInterval) {
				p.summary()
				lastSummary = now
			}
			p.flush()
		}
	}
	return p.fatal
}

// tickInterval is the scan interval within [minTick, maxTick], and no
// longer than the status interval.
func (p *Pipeline) tickInterval() time.Duration {
	t := min(max(p.scanEvery, minTick), maxTick)
	if p.cfg.StatusInterval > 0 {
		t = min(t, max(p.cfg.StatusInterval, minTick))
	}
	if p.cfg.SummaryInterval > 0 {
		t = min(t, max(p.cfg.SummaryInterval, minTick))
	}
	if p.cfg.Heal != nil && p.cfg.HealInterval > 0 {
		t = min(t, max(p.cfg.HealInterval, minTick))
	}
	if p.track == nil {
		t = minTick
	}
	return t
}

// runErr is the sinks' error, nil for a closed pipe: the reader left,
// which ends tcptrace as a signal does.
func (p *Pipeline) runErr() error {
	if p.sinkErr == nil || OutputClosed(p.sinkErr) {
		return nil
	}
	return p.sinkErr
}

// OutputClosed reports whether err says the reader of an output went away.
func OutputClosed(err error) bool {
	return errors.Is(err, syscall.EPIPE)
}

// Err says why the sinks stopped being written to, nil if they were not.
func (p *Pipeline) Err() error { return p.sinkErr }

func (p *Pipeline) handle(ev *events.Event) {
	if ev.Kind == events.KindProgress {
		p.progress.Store(time.Now().UnixNano())
		// Every event before ev.BootNS has been handled: stuck reports up
		// to then cannot overtake a close.
		p.expire(ev.BootNS)
		p.recheck(ev.BootNS)
		return
	}
	p.attr.Socket(ev)
	if p.track == nil {
		p.emit(ev)
		return
	}
	switch ev.Kind {
	case events.KindAcceptFailed:
		// Not a socket's episode: the listener's holders, and out.
		p.attr.Owners(ev)
		p.emit(ev)
		return
	case events.KindCloseWait:
		p.attr.CachedOwners(ev)
	case events.KindAppClose, events.KindAbort:
		if ev.Kind == events.KindAbort && ev.Inode != 0 {
			// Nobody closed it (a destroy, a timeout): its holders may
			// still have it open. Found as for stuck, within the
			// resolver's budget; the tracker's last-seen owners otherwise.
			p.attr.Owners(ev)
		}
		p.attr.Closed(ev)
		delete(p.refused, ev.Sock)
	}
	p.track.Observe(ev, p.emit)
}

// scan reads the kernel's CLOSE-WAIT table and tracks the sockets past the
// threshold that the tracker does not know yet: they are due, and the
// next progress mark reports them.
func (p *Pipeline) scan() {
	start := time.Now()
	p.lastScan = start
	// The aggregates count the sockets in CLOSE-WAIT: when the tracker has
	// them all (none, or only those already reported), the table holds
	// nothing to take in, and reading it would cost a walk of all its
	// buckets for nothing.
	if _, inCW, err := p.totals(); err == nil && inCW == uint64(p.track.Len()) {
		p.scansSkipped.Add(1)
		p.scanEvery = p.scanInterval(0)
		return
	}
	dueBoot := bootclock.Now() - p.cfg.Track.Threshold.Nanoseconds()
	var adopting time.Duration // work that a record would have cost too
	known := func(sock uint64) bool {
		_, refused := p.refused[sock]
		return refused || p.track.Has(sock)
	}
	_, err := p.src.ScanCloseWait(dueBoot, known, func(ev *events.Event) {
		t0 := time.Now()
		p.attr.Socket(ev)
		if !p.track.Insert(ev) && len(p.refused) < p.cfg.Track.MaxSockets {
			// The table is full, and counted that once: a scan that reads
			// the whole table (before Linux 5.9) offers it again.
			p.refused[ev.Sock] = struct{}{}
		}
		adopting += time.Since(t0)
	})
	if err != nil {
		p.log.Warn("read the kernel's CLOSE-WAIT table", "error", err)
	}
	// The interval follows what reading the table costs, not what taking in
	// a burst of new sockets did: that would delay the next ones.
	cost := time.Since(start) - adopting
	p.scans.Add(1)
	p.scanCost = max(p.scanCost, cost)
	p.scanEvery = p.scanInterval(cost)
}

// scanInterval is a tenth of the threshold, at least minScanInterval and
// scanCostShare times what reading the table cost, at most
// maxScanInterval.
func (p *Pipeline) scanInterval(cost time.Duration) time.Duration {
	return min(max(p.cfg.Track.Threshold/10, minScanInterval, scanCostShare*cost), maxScanInterval)
}

func (p *Pipeline) expire(nowBoot int64) {
	if p.track == nil {
		return
	}
	if err := p.track.Expire(nowBoot, p.stillInCloseWait, p.refreshOwners, p.emit); err != nil {
		p.fatal = err
	}
	if p.releaseDiag != nil {
		p.releaseDiag()
	}
}

// reconcile reads the whole kernel table after records were dropped: a
// tracked socket missing from it has left CLOSE-WAIT, and its close record
// is on the way or was among those dropped. Which one is known once every
// record up to now has been handled (recheck).
func (p *Pipeline) reconcile() {
	p.needSweep = false
	p.track.NewScan()
	now := bootclock.Now()
	if err := p.src.ListCloseWait(func(sock uint64) { p.track.Seen(sock) }); err != nil {
		p.log.Warn("read the kernel's CLOSE-WAIT table", "error", err)
		return
	}
	p.sweep, p.sweepAt = p.track.Unseen(now), now
}

// recheck drops the tracked sockets that reconcile did not find in the
// kernel table and whose close has not arrived by the progress mark at
// nowBoot: their close record was dropped. Without this a stuck socket
// whose close was dropped would count as stuck for ever.
func (p *Pipeline) recheck(nowBoot int64) {
	if len(p.sweep) == 0 || nowBoot < p.sweepAt {
		return
	}
	for _, sock := range p.sweep {
		if err := p.track.Recheck(sock, p.stillInCloseWait); err != nil {
			p.fatal = err
			break
		}
	}
	p.sweep = p.sweep[:0]
}

// stillInCloseWait checks a socket due for a stuck report against the
// kernel's table, when the kernel tracks it.
func (p *Pipeline) stillInCloseWait(socket *events.Event) (bool, error) {
	if !socket.KernelTracked {
		return true, nil
	}
	return p.src.InCloseWait(socket)
}

// refreshOwners brings a stuck report's owners up to date. A socket that
// was still in its listener's accept queue when the FIN arrived had no
// file, hence no inode: list the namespace's sockets for its current one.
// It also reads why the socket stays (diagnose), when the source can.
func (p *Pipeline) refreshOwners(ev *events.Event) time.Duration {
	if ev.Inode == 0 {
		ev.Inode = p.currentInode(ev)
	}
	ev.Peer = nil
	if p.diagnose != nil {
		p.diagnose(ev)
	}
	if peer := ev.Peer; peer != nil && peer.Inode != 0 {
		// The local client: who holds the other end.
		peer.Owners = p.holdersOf(peer.Inode, ev.NetNS)
	}
	ev.Listener = nil
	if lf, ok := p.src.(ListenerFinding); ok && ev.Inode == 0 {
		if l, ok := lf.Listener(ev.NetNS, netip.AddrPortFrom(ev.LocalAddr, ev.LocalPort)); ok {
			l.Owners = p.holdersOf(l.Inode, ev.NetNS)
			ev.Listener = &l
		}
	}
	return p.attr.Owners(ev)
}

// holdersOf is who holds another socket than the event's (a listener, the
// local peer), as the attributor finds them.
func (p *Pipeline) holdersOf(inode uint64, netns uint32) []events.Owner {
	holder := events.Event{Inode: inode, NetNS: netns}
	p.attr.Owners(&holder)
	return holder.Owners
}

func (p *Pipeline) currentInode(ev *events.Event) uint64 {
	r, ok := p.rescans[ev.NetNS]
	if !ok || time.Since(r.at) > rescanMaxAge {
		inodes, err := p.src.Inodes(ev.NetNS)
		if err != nil {
			p.log.Debug("list sockets for their inodes", "netns", ev.NetNS, "error", err)
		}
		if p.rescans == nil {
			p.rescans = make(map[uint32]rescan)
		}
		for ns, old := range p.rescans {
			if time.Since(old.at) > rescanMaxAge {
				delete(p.rescans, ns)
			}
		}
		r = rescan{at: time.Now(), inodes: inodes}
		p.rescans[ev.NetNS] = r
	}
	return r.inodes[ev.Sock]
}

func (p *Pipeline) emit(ev *events.Event) {
	if p.sinkErr != nil {
		return
	}
	if ev.K8s == nil && ev.PodUID != "" {
		// The tracker keeps no names: a stuck report gets them now, when
		// the pod is likelier to be known than when its FIN arrived.
		p.attr.Socket(ev)
	}
	for _, s := range p.sinks {
		if err := s.Write(ev); err != nil {
			p.sinkErr = fmt.Errorf("write output: %w", err)
			return
		}
	}
}

func (p *Pipeline) flush() {
	if p.sinkErr != nil {
		return
	}
	for _, s := range p.sinks {
		if err := s.Flush(); err != nil {
			p.sinkErr = fmt.Errorf("write output: %w", err)
			return
		}
	}
}

// summary emits the summary events (the leak report's rows).
func (p *Pipeline) summary() {
	evs, err := p.cfg.Summary()
	if err != nil {
		p.log.Warn("summary", "error", err)
	}
	for i := range evs {
		p.emit(&evs[i])
	}
}

// reportLost emits a lost event with what was dropped since the last one.
func (p *Pipeline) reportLost() {
	now, err := p.src.Lost()
	if err != nil {
		p.log.Warn("read drop counters", "error", err)
		return
	}
	if p.track != nil {
		now[events.LostTableFull] = p.track.TableFull()
	}
	delta := now.Sub(p.lost)
	if delta.Total() == 0 {
		return
	}
	if delta[events.LostRingbufFull]+delta[events.LostDecode] > 0 {
		// A dropped record may be the close of a socket we track.
		p.needSweep = true
	}
	p.lost = now
	p.lostMu.Lock()
	p.lostShared = now
	p.lostMu.Unlock()
	p.emit(&events.Event{Kind: events.KindLost, Time: time.Now(), Lost: delta})
}

// Lost returns the drop counts reported so far (in lost events). Safe to
// call from any goroutine.
func (p *Pipeline) Lost() events.LostCounts {
	p.lostMu.Lock()
	defer p.lostMu.Unlock()
	return p.lostShared
}

// totals sums the kernel's aggregates.
func (p *Pipeline) totals() (sum events.Aggregate, inCW uint64, err error) {
	err = p.src.Aggregates(func(a *events.Aggregate) {
		inCW += a.InCloseWait()
		sum.Entered += a.Entered
		sum.Closed += a.Closed
		sum.Aborted += a.Aborted
		for i, n := range a.Hist {
			sum.Hist[i] += n
		}
	})
	return sum, inCW, err
}

func (p *Pipeline) resetStatus() {
	if sum, _, err := p.totals(); err == nil {
		p.prevCloses, p.prevHist = sum.Closed, sum.Hist
	}
}

// status gives the StatusSinks the counts since the last status.
func (p *Pipeline) status(now time.Time) {
	sum, inCW, err := p.totals()
	if err != nil {
		p.log.Warn("read the kernel's aggregates", "error", err)
		return
	}
	closes, hist := sum.Closed, sum.Hist
	st := Status{InCloseWait: inCW, Closes: closes - p.prevCloses, Interval: now.Sub(p.lastStatus)}
	if p.track != nil {
		st.Stuck = p.track.Stuck()
	}
	var delta [events.HistBuckets]uint64
	for i := range hist {
		delta[i] = hist[i] - p.prevHist[i]
	}
	st.P99, st.HasP99 = events.Quantile(&delta, 0.99)
	p.prevCloses, p.prevHist, p.lastStatus = closes, hist, now
	for _, s := range p.sinks {
		if ss, ok := s.(StatusSink); ok && p.sinkErr == nil {
			if err := ss.WriteStatus(&st); err != nil {
				p.sinkErr = fmt.Errorf("write output: %w", err)
			}
		}
	}
}

// Summary returns the closing figures as slog attributes. Call it before
// the source is closed: it reads the kernel's aggregates.
func (p *Pipeline) Summary() []any {
	attrs := []any{"lost", p.lost.Total()}
	for cause, n := range p.lost {
		if n > 0 {
			attrs = append(attrs, events.LostCause(cause).String(), n)
		}
	}
	if p.track != nil {
		// The kernel counts every socket, tracked in user space or not.
		sum, inCW, err := p.totals()
		if err != nil {
			p.log.Warn("read the kernel's aggregates", "error", err)
		} else {
			attrs = append(attrs, "still_in_close_wait", inCW)
		}
		attrs = append(attrs, "tracked", p.track.Len(), "stuck", p.track.Stuck(),
			"table_scans", p.scans.Load(), "table_scans_skipped", p.scansSkipped.Load(), "table_scan_max", p.scanCost.Round(time.Microsecond))
		if n := p.track.Vanished(); n > 0 {
			attrs = append(attrs, "close_wait_exits_missed", n)
		}
		if n := p.track.Deferred(); n > 0 {
			attrs = append(attrs, "stuck_reports_held_for_owner", n)
		}
		if err == nil {
			attrs = append(attrs, "close_wait_counted", sum.Entered, "closes_counted", sum.Closed, "aborts_counted", sum.Aborted)
		}
	}
	return attrs
}
