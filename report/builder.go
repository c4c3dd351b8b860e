package report

import (
	"cmp"
	"fmt"
	"iter"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
	"github.com/tcptrace/tcptrace/metrics"
	"github.com/tcptrace/tcptrace/tracer"
	"github.com/tcptrace/tcptrace/track"
)

// Source is the kernel's side (a tracer.Tracer in closewait mode).
type Source interface {
	// Aggregates visits the kernel's counts and FIN-to-close histogram per
	// (cgroup, service port, direction), the overflow key among them.
	Aggregates(fn func(a *events.Aggregate)) error
	// Table visits every socket of the kernel's CLOSE-WAIT table as a
	// close_wait event: Time is when its FIN came (when tcptrace first saw
	// it unless AgeKnown), with its CgroupID, Dir and ports.
	Table(fn func(ev *events.Event)) error
}

// Sockets iterates over the sockets user space tracks (a track.Tracker):
// their Stuck flag and Owners.
type Sockets interface {
	All() iter.Seq[track.Info]
}

// Namer names the workload of a cgroup v2 id (attribute.Workloads).
type Namer interface {
	Workload(cgroupID uint64) (w metrics.Workload, alive bool)
}

// AcceptFailures is a Source that counts accept() failing for want of a
// descriptor (the tracer): the holders that ran out.
type AcceptFailures interface {
	AcceptFailures(fn func(events.AcceptFailure)) error
}

// ListenerLister lists the listening sockets by network namespace (the
// tracer's Listening).
type ListenerLister func() (map[uint32][]events.Listener, error)

// PeerLister lists the remote endpoints our sockets wait on (KernelPeers).
type PeerLister func() ([]Peer, error)

// Config sets up a Builder. Zero values take the defaults.
type Config struct {
	// Window is how far back rates look (default 1m).
	Window time.Duration
	// History is how many InCloseWait samples a row keeps (default 120).
	History int
	// MaxHolders bounds a row's holders (default 5).
	MaxHolders int
	// MaxPeers bounds the report's peers (default 100), FIN_WAIT2 first.
	MaxPeers int
	// Threshold is the stuck threshold. Without Sockets, Stuck counts the
	// CLOSE-WAIT table's sockets at least this old.
	Threshold time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// ProcRoot is where processes' descriptors are counted ("/proc").
	ProcRoot string
	// Listeners lists the listening sockets for the report's Listeners
	// (nil: none); MaxListeners bounds them (default 20).
	Listeners    ListenerLister
	MaxListeners int
	// Warn gets what Report had to leave out of a report it made (the
	// CLOSE-WAIT table or the peers could not be read); nil ignores it.
	Warn func(err error)
}

// Defaults.
const (
	DefaultWindow       = time.Minute
	DefaultHistory      = 120
	DefaultMaxHolders   = 5
	DefaultMaxPeers     = 100
	DefaultMaxListeners = 20
)

// nameTTL is how long a cgroup's workload name is reused: names change
// when Kubernetes enrichment learns a pod, and a scrape-like pace of
// lookups is what Namer is built for.
const nameTTL = 10 * time.Second

// rateSteps is how finely the window is sampled for rates: a sample is
// kept for rates when at least Window/rateSteps passed since the last
// one kept, so memory per row does not depend on how often Sample runs.
const rateSteps = 64

// Overflow is the workload of the row the kernel's overflow key becomes:
// the keys that did not fit its aggregate table.
var Overflow = Workload{Cgroup: metrics.Other}

// Builder computes the leak report from the kernel's aggregates and
// CLOSE-WAIT table, the tracker's stuck sockets, /proc and the peers
// listing. Sample records counts over time for rates and history; Report
// makes a report. Both are safe for concurrent use.
type Builder struct {
	cfg   Config
	src   Source
	socks Sockets
	names Namer
	peers PeerLister
	proc  *procCache

	namesMu sync.Mutex
	named   map[uint64]nameEntry

	// The listeners at the last sample, and their drop counts within the
	// window, by network namespace and inode.
	listenMu   sync.Mutex
	listening  map[uint32][]events.Listener
	listenAt   time.Time
	listenErr  error
	dropSeries map[listenerKey][]dropSample

	mu      sync.Mutex
	samples uint64    // number of the last sample
	lastT   time.Time // when the last sample was taken
	keys    map[events.AggregateKey]*keyState
	rows    map[rowKey]*rowState
}

type listenerKey struct {
	netns uint32
	inode uint64
}

type dropSample struct {
	t     time.Time
	drops uint64
}

type nameEntry struct {
	w  Workload
	at time.Time
}

// rowKey is a row's identity: several cgroups with the same names are one
// row. id separates cgroups when there is no Namer.
type rowKey struct {
	w    Workload
	id   uint64
	port uint16
	dir  events.Direction
}

// keyState is a kernel aggregate as last sampled: its counters turn into
// deltas, so that a key that goes away (a dead cgroup's, deleted) or comes
// back (from 0) never makes a row's counts jump.
type keyState struct {
	entered, closed, aborted uint64
	seen                     uint64 // sample number
}

// rowState is what samples recorded of a row.
type rowState struct {
	// Counts since the builder first saw the row, from the deltas of its
	// keys: entered, closed, and the net change of InCloseWait.
	entered, closed uint64
	net             int64
	gauge           uint64 // InCloseWait at the last sample
	seen            uint64 // sample number the row was last present in
	lastPresent     time.Time

	last    rateSample   // the newest sample
	rates   []rateSample // thinned (see rateSteps), oldest first, within the window
	history []uint64     // InCloseWait per sample, oldest first, at most History
}

type rateSample struct {
	t               time.Time
	entered, closed uint64
	net             int64
}

// NewBuilder returns a Builder. socks, names and peers may be nil: no
// stuck counts, holders or diagnosis; rows by cgroup id; no peers.
func NewBuilder(cfg Config, src Source, socks Sockets, names Namer, peers PeerLister) *Builder {
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.History <= 0 {
		cfg.History = DefaultHistory
	}
	if cfg.MaxHolders <= 0 {
		cfg.MaxHolders = DefaultMaxHolders
	}
	if cfg.MaxPeers <= 0 {
		cfg.MaxPeers = DefaultMaxPeers
	}
	if cfg.MaxListeners <= 0 {
		cfg.MaxListeners = DefaultMaxListeners
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Builder{
		cfg: cfg, src: src, socks: socks, names: names, peers: peers,
		proc:  newProcCache(cfg.ProcRoot, cfg.Now),
		named: make(map[uint64]nameEntry),
		keys:  make(map[events.AggregateKey]*keyState),
		rows:  make(map[rowKey]*rowState),
	}
}

// workload names a cgroup, through the cache.
func (b *Builder) workload(id uint64, now time.Time) Workload {
	b.namesMu.Lock()
	e, ok := b.named[id]
	b.namesMu.Unlock()
	if ok && now.Sub(e.at) < nameTTL && !now.Before(e.at) {
		return e.w
	}
	m, _ := b.names.Workload(id)
	w := Workload{Namespace: m.Namespace, Pod: m.Pod, Container: m.Container, Cgroup: m.Cgroup}
	b.namesMu.Lock()
	defer b.namesMu.Unlock()
	if len(b.named) >= 256 {
		for id, old := range b.named {
			if now.Sub(old.at) >= nameTTL {
				delete(b.named, id)
			}
		}
	}
	b.named[id] = nameEntry{w, now}
	return w
}

// rowOf is the row of a kernel aggregate key.
func (b *Builder) rowOf(k events.AggregateKey, now time.Time) rowKey {
	if k.Dir == events.DirOverflow {
		return rowKey{w: Overflow, dir: events.DirOverflow}
	}
	if b.names == nil {
		return rowKey{id: k.CgroupID, port: k.Port, dir: k.Dir}
	}
	return rowKey{w: b.workload(k.CgroupID, now), port: k.Port, dir: k.Dir}
}

// socketKey is the aggregate key of a socket, as the kernel makes it: the
// service port is the local one of an inbound socket, the remote one of
// an outbound socket; a socket of unknown direction counts as inbound.
func socketKey(cgroupID uint64, dir events.Direction, local, remote uint16) events.AggregateKey {
	if dir == events.DirOutbound {
		return events.AggregateKey{CgroupID: cgroupID, Port: remote, Dir: dir}
	}
	return events.AggregateKey{CgroupID: cgroupID, Port: local, Dir: events.DirInbound}
}

// Sample records each row's counts now, for rates and History: call it at
// every refresh (say each second). Rates need two samples; History gets
// one value per call. Rows gone from the kernel for longer than the
// window are forgotten.
func (b *Builder) Sample() error {
	now := b.cfg.Now()
	b.sampleListeners(now)
	type current struct {
		key                            events.AggregateKey
		row                            rowKey
		entered, closed, aborted, incw uint64
	}
	var cur []current
	err := b.src.Aggregates(func(a *events.Aggregate) {
		cur = append(cur, current{a.AggregateKey, b.rowOf(a.AggregateKey, now), a.Entered, a.Closed, a.Aborted, a.InCloseWait()})
	})
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	b.samples++
	first := b.samples == 1
	// A row born after the first sample starts from zero at the previous
	// sample: the burst that creates it counts in its rates instead of
	// being their base. What the first sample finds is history of unknown
	// pace (the start-up listing's sockets among it), and only the base.
	born := b.lastT
	b.lastT = now
	for _, c := range cur {
		r := b.rows[c.row]
		if r == nil {
			r = &rowState{}
			if !born.IsZero() && born.Before(now) {
				r.rates = append(r.rates, rateSample{t: born})
			}
			b.rows[c.row] = r
		}
		if r.seen != b.samples {
			r.seen, r.gauge, r.lastPresent = b.samples, 0, now
		}
		r.gauge += c.incw
		var de, dc, da uint64
		k := b.keys[c.key]
		switch {
		case k != nil:
			de, dc, da = delta(c.entered, k.entered), delta(c.closed, k.closed), delta(c.aborted, k.aborted)
		case !first:
			// New since the last sample: all it counts happened since.
			de, dc, da = c.entered, c.closed, c.aborted
			fallthrough
		default:
			k = &keyState{}
			b.keys[c.key] = k
		}
		*k = keyState{entered: c.entered, closed: c.closed, aborted: c.aborted, seen: b.samples}
		r.entered += de
		r.closed += dc
		r.net += int64(de) - int64(dc) - int64(da)
	}
	for k, s := range b.keys {
		if s.seen != b.samples {
			delete(b.keys, k) // deleted in the kernel: counts from 0 if it returns
		}
	}
	step := b.cfg.Window / rateSteps
	for k, r := range b.rows {
		if r.seen != b.samples {
			if now.Sub(r.lastPresent) > b.cfg.Window {
				delete(b.rows, k)
				continue
			}
			r.gauge = 0
		}
		s := rateSample{t: now, entered: r.entered, closed: r.closed, net: r.net}
		r.last = s
		if n := len(r.rates); n == 0 || now.Sub(r.rates[n-1].t) >= step {
			r.rates = append(r.rates, s)
		}
		cut := 0
		for cut < len(r.rates)-1 && now.Sub(r.rates[cut].t) > b.cfg.Window {
			cut++
		}
		r.rates = slices.Delete(r.rates, 0, cut)
		if len(r.history) >= b.cfg.History {
			r.history = slices.Delete(r.history, 0, len(r.history)-b.cfg.History+1)
		}
		r.history = append(r.history, r.gauge)
	}
	return nil
}

// delta is how much a kernel counter grew; a counter below its last value
// was deleted and created again, and counts from 0.
func delta(now, last uint64) uint64 {
	if now < last {
		return now
	}
	return now - last
}

// rates are a row's rates over the window, and whether anything happened
// in it.
type rates struct {
	newPerMin, closesPerMin, growthPerMin float64
	active                                bool
}

// ratesOf computes r's rates at now: from the oldest sample in the window
// to the newest; 0 with fewer than two samples, or none in the window.
func (b *Builder) ratesOf(r *rowState, now time.Time) rates {
	if r == nil || len(r.rates) == 0 || now.Sub(r.last.t) > b.cfg.Window {
		return rates{}
	}
	var base rateSample
	found := false
	for _, s := range r.rates {
		if r.last.t.Sub(s.t) <= b.cfg.Window {
			base, found = s, true
			break
		}
	}
	elapsed := r.last.t.Sub(base.t)
	if !found || elapsed <= 0 {
		return rates{}
	}
	mins := elapsed.Minutes()
	de, dc, dn := r.last.entered-base.entered, r.last.closed-base.closed, r.last.net-base.net
	return rates{
		newPerMin:    float64(de) / mins,
		closesPerMin: float64(dc) / mins,
		growthPerMin: float64(dn) / mins,
		active:       de > 0 || dc > 0 || dn != 0,
	}
}

// acc gathers a row while a report is made.
type acc struct {
	row      Row
	hist     [events.HistBuckets]uint64
	cgroupCW uint64 // InCloseWait of the cgroup named in row.CgroupID
	oldest   time.Time
	owners   map[int]*holderCount
	// Stuck from the table, without Sockets.
	tableStuck int
}

type holderCount struct {
	comm    string
	sockets int
}

// stuckKey gathers the tracker's stuck sockets of one aggregate key.
type stuckKey struct {
	n, readEOF, neverRead, unreadData int
	owners                            map[int]*holderCount
}

// Report makes a report now. It reads the kernel (aggregates, CLOSE-WAIT
// table), the tracker, /proc and the peers. It fails only without the
// aggregates: a later read that fails (the table, the peers) leaves its
// part out and goes to Config.Warn, so that a view keeps showing the rest.
func (b *Builder) Report() (Report, error) {
	now := b.cfg.Now()
	rep := Report{Time: now, Window: b.cfg.Window, Rows: []Row{}, Peers: []Peer{}}
	accs := make(map[rowKey]*acc)
	keyRows := make(map[events.AggregateKey]rowKey)
	var overflow *rowKey
	get := func(k rowKey) *acc {
		a := accs[k]
		if a == nil {
			a = &acc{row: Row{Workload: k.w, CgroupID: k.id, Port: k.port, Direction: k.dir.String()}}
			accs[k] = a
		}
		return a
	}
	err := b.src.Aggregates(func(ag *events.Aggregate) {
		k := b.rowOf(ag.AggregateKey, now)
		keyRows[ag.AggregateKey] = k
		if ag.Dir == events.DirOverflow {
			overflow = &k
		}
		a := get(k)
		cw := ag.InCloseWait()
		a.row.InCloseWait += cw
		if ag.Dir != events.DirOverflow && (a.row.CgroupID == 0 || cw > a.cgroupCW || (cw == a.cgroupCW && ag.CgroupID > a.row.CgroupID)) {
			a.row.CgroupID, a.cgroupCW = ag.CgroupID, cw
		}
		for i, n := range ag.Hist {
			a.hist[i] += n
		}
	})
	if err != nil {
		return rep, fmt.Errorf("read the kernel's aggregates: %w", err)
	}
	// The row of a socket: its key's; a key the kernel has no aggregate for
	// overflowed (a dead cgroup's is only deleted once it has no socket in
	// CLOSE-WAIT), unless nothing did (a socket newer than the read).
	rowOfSocket := func(k events.AggregateKey) *acc {
		if rk, ok := keyRows[k]; ok {
			return accs[rk]
		}
		if overflow != nil {
			return accs[*overflow]
		}
		rk := b.rowOf(k, now)
		keyRows[k] = rk
		a := get(rk)
		if a.row.CgroupID == 0 {
			a.row.CgroupID = k.CgroupID
		}
		return a
	}

	var errs []error
	err = b.src.Table(func(ev *events.Event) {
		a := rowOfSocket(socketKey(ev.CgroupID, ev.Dir, ev.LocalPort, ev.RemotePort))
		if a.oldest.IsZero() || ev.Time.Before(a.oldest) {
			a.oldest, a.row.OldestAgeKnown = ev.Time, ev.AgeKnown
		}
		if b.socks == nil && b.cfg.Threshold > 0 && now.Sub(ev.Time) >= b.cfg.Threshold {
			a.tableStuck++
		}
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("read the kernel's CLOSE-WAIT table: %w", err))
	}
	// Processes whose accept() failed with EMFILE: out of descriptors.
	emfile := make(map[int]uint64)
	if af, ok := b.src.(AcceptFailures); ok {
		if err := af.AcceptFailures(func(f events.AcceptFailure) {
			if f.Reason == "emfile" {
				emfile[int(f.PID)] += f.Count
			}
		}); err != nil {
			errs = append(errs, fmt.Errorf("read the accept() failures: %w", err))
		}
	}

	if b.socks != nil {
		// Quick work only: All holds the tracker's lock.
		stuck := make(map[events.AggregateKey]*stuckKey)
		for info := range b.socks.All() {
			if !info.Stuck {
				continue
			}
			k := socketKey(info.CgroupID, info.Dir, info.LocalPort, info.RemotePort)
			s := stuck[k]
			if s == nil {
				s = &stuckKey{owners: make(map[int]*holderCount)}
				stuck[k] = s
			}
			s.n++
			diagnose(s, &info)
			for i, o := range info.Owners {
				if o.Process == nil || slices.ContainsFunc(info.Owners[:i], func(p events.Owner) bool {
					return p.Process != nil && p.PID == o.PID
				}) {
					continue // a process holding the socket twice holds one socket
				}
				h := s.owners[o.PID]
				if h == nil {
					h = &holderCount{comm: o.Comm}
					s.owners[o.PID] = h
				}
				h.sockets++
			}
		}
		for k, s := range stuck {
			a := rowOfSocket(k)
			a.row.Stuck += s.n
			a.row.ReadEOF += s.readEOF
			a.row.NeverRead += s.neverRead
			a.row.UnreadData += s.unreadData
			if a.owners == nil {
				a.owners = make(map[int]*holderCount)
			}
			for pid, h := range s.owners {
				if have := a.owners[pid]; have != nil {
					have.sockets += h.sockets
				} else {
					a.owners[pid] = &holderCount{comm: h.comm, sockets: h.sockets}
				}
			}
		}
	}

	b.mu.Lock()
	for k, a := range accs {
		r := &a.row
		if b.socks == nil {
			r.Stuck = a.tableStuck
		}
		if !a.oldest.IsZero() {
			r.OldestAge = max(now.Sub(a.oldest), 0)
		} else {
			r.OldestAgeKnown = false
		}
		st := b.rows[k]
		rt := b.ratesOf(st, now)
		if !rt.active && r.InCloseWait == 0 && r.Stuck == 0 && a.oldest.IsZero() {
			delete(accs, k) // idle
			continue
		}
		r.NewPerMinute, r.ClosesPerMinute, r.GrowthPerMinute = rt.newPerMin, rt.closesPerMin, rt.growthPerMin
		r.History = []uint64{}
		if st != nil {
			r.History = slices.Clone(st.history)
		}
	}
	b.mu.Unlock()

	for _, a := range accs {
		r := &a.row
		r.Hist = a.hist[:]
		for _, n := range a.hist {
			r.Closes += n
		}
		if r.Closes > 0 {
			r.P50, _ = events.Quantile(&a.hist, 0.50)
			r.P90, _ = events.Quantile(&a.hist, 0.90)
			r.P99, _ = events.Quantile(&a.hist, 0.99)
			for i := len(a.hist) - 1; i >= 0; i-- {
				if a.hist[i] > 0 {
					r.Max = events.HistUpperBound(i)
					break
				}
			}
		}
		r.Holders = b.holders(a.owners)
		r.Exhaustion, r.ExhaustionNever = exhaustion(r.Holders, r.GrowthPerMinute)
		for i := range r.Holders {
			h := &r.Holders[i]
			if h.AcceptFailures = emfile[h.PID]; h.AcceptFailures > 0 {
				r.Exhausted, r.Exhaustion, r.ExhaustionNever = true, 0, false
			}
		}
		rep.Rows = append(rep.Rows, *r)
	}
	slices.SortFunc(rep.Rows, compareRows)

	rep.Listeners, rep.ListenersOmitted = b.listenersNow(now, &errs)
	if b.peers != nil {
		peers, err := b.peers()
		if err != nil {
			errs = append(errs, fmt.Errorf("list peers: %w", err))
		}
		slices.SortFunc(peers, comparePeers)
		if len(peers) > b.cfg.MaxPeers {
			rep.PeersOmitted = len(peers) - b.cfg.MaxPeers
			peers = peers[:b.cfg.MaxPeers]
		}
		if peers != nil {
			rep.Peers = peers
		}
	}
	if err := oneline.Join(errs...); err != nil && b.cfg.Warn != nil {
		b.cfg.Warn(err)
	}
	return rep, nil
}

// diagnose counts why a stuck socket is stuck, when a stuck report could
// read its receive state.
func diagnose(s *stuckKey, info *track.Info) {
	switch {
	case !info.DiagKnown:
	case info.ReadEOF:
		s.readEOF++
	default:
		s.neverRead++
		if info.UnreadData {
			s.unreadData++
		}
	}
}

// holders are the processes holding the most of a row's stuck sockets,
// with their descriptor use.
func (b *Builder) holders(owners map[int]*holderCount) []Holder {
	type counted struct {
		pid int
		*holderCount
	}
	list := make([]counted, 0, len(owners))
	for pid, h := range owners {
		list = append(list, counted{pid, h})
	}
	slices.SortFunc(list, func(x, y counted) int {
		return cmp.Or(cmp.Compare(y.sockets, x.sockets), cmp.Compare(x.pid, y.pid))
	})
	hs := make([]Holder, 0, min(len(list), b.cfg.MaxHolders))
	for _, c := range list[:min(len(list), b.cfg.MaxHolders)] {
		u := b.proc.get(c.pid)
		hs = append(hs, Holder{PID: c.pid, Comm: c.comm, OpenFDs: u.openFDs, FDLimit: u.fdLimit})
	}
	return hs
}

// exhaustion forecasts when the holder with the fewest descriptors left
// runs out at growth sockets per minute: never when not growing, or when
// no holder's use is known.
func exhaustion(holders []Holder, growthPerMin float64) (time.Duration, bool) {
	left := -1
	for _, h := range holders {
		if h.FDLimit <= 0 || h.OpenFDs <= 0 {
			continue // unknown
		}
		l := max(h.FDLimit-h.OpenFDs, 0)
		if left < 0 || l < left {
			left = l
		}
	}
	if left < 0 || !(growthPerMin > 0) {
		return 0, true
	}
	d := float64(left) / growthPerMin * float64(time.Minute)
	if d >= math.MaxInt64 {
		return 0, true
	}
	return time.Duration(d), false
}

// compareRows orders rows by leak rate, then stuck sockets, then sockets
// in CLOSE-WAIT, then names.
func compareRows(x, y Row) int {
	return cmp.Or(
		cmp.Compare(y.GrowthPerMinute, x.GrowthPerMinute),
		cmp.Compare(y.Stuck, x.Stuck),
		cmp.Compare(y.InCloseWait, x.InCloseWait),
		cmp.Compare(x.Workload.Namespace, y.Workload.Namespace),
		cmp.Compare(x.Workload.Pod, y.Workload.Pod),
		cmp.Compare(x.Workload.Container, y.Workload.Container),
		cmp.Compare(x.Workload.Cgroup, y.Workload.Cgroup),
		cmp.Compare(x.Port, y.Port),
		cmp.Compare(x.Direction, y.Direction),
		cmp.Compare(x.CgroupID, y.CgroupID),
	)
}

// comparePeers orders peers by FIN_WAIT2 sockets, then TIME_WAIT ones.
func comparePeers(x, y Peer) int {
	return cmp.Or(
		cmp.Compare(y.FinWait2, x.FinWait2),
		cmp.Compare(y.TimeWait, x.TimeWait),
		cmp.Compare(y.OldestFinWait2, x.OldestFinWait2),
		cmp.Compare(x.Addr, y.Addr),
		cmp.Compare(x.NetNS, y.NetNS),
	)
}

// KernelPeers lists the node's peers (tracer.ListPeers) in every network
// namespace (netns 0) or in one, and, when ports are given, only those
// waiting on one of them: the selection the rows have (--port).
func KernelPeers(netns uint32, ports []uint16) PeerLister {
	return func() ([]Peer, error) {
		ps, err := tracer.ListPeers(netns)
		if len(ports) > 0 {
			ps = slices.DeleteFunc(ps, func(p tracer.PeerSockets) bool { return !slices.Contains(ports, p.Remote.Port()) })
		}
		return PeersOf(ps), err
	}
}

// PeersOf converts the tracer's peer counts.
func PeersOf(ps []tracer.PeerSockets) []Peer {
	peers := make([]Peer, 0, len(ps))
	for _, p := range ps {
		peers = append(peers, Peer{
			Addr: p.Remote.String(), NetNS: p.NetNS,
			FinWait2: p.FinWait2, TimeWait: p.TimeWait, OldestFinWait2: p.OldestFinWait2,
		})
	}
	return peers
}
