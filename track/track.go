// Package track correlates the moment a socket enters CLOSE-WAIT (the peer's
// FIN) with the moment it leaves (the application's close), and finds the
// sockets that stay in CLOSE-WAIT past a threshold.
//
// One goroutine, the event loop, changes the table (Observe, Insert,
// Expire). Others (metrics, a leak report) read it concurrently with Len,
// Stuck and All. The loop's callbacks (emit, verify, refresh) run outside
// the lock, so a reader never waits behind a slow output or a /proc scan.
package track

import (
	"container/heap"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"sync"
	"time"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
)

// Config sets the stuck threshold and the table bound.
type Config struct {
	// Threshold is how long a socket may stay in CLOSE-WAIT before it is
	// reported stuck.
	Threshold time.Duration
	// Repeat re-reports a stuck socket at this interval; 0 reports it once.
	Repeat time.Duration
	// MaxSockets bounds the table; sockets beyond it are counted, not tracked.
	MaxSockets int
	// MaxOwnerWait bounds how long a first stuck report may be held back,
	// past when it was due, while its owner cannot be looked up yet (see
	// Refresher). 0 never holds a report back.
	MaxOwnerWait time.Duration
}

// Validate reports a configuration the tracker cannot run with.
func (c Config) Validate() error {
	switch {
	case c.Threshold <= 0:
		return fmt.Errorf("threshold %v must be above 0", c.Threshold)
	case c.Repeat < 0:
		return fmt.Errorf("repeat %v must not be negative", c.Repeat)
	case c.Repeat > 0 && c.Repeat < 10*time.Millisecond:
		return fmt.Errorf("repeat %v is below 10ms", c.Repeat)
	case c.MaxSockets < 1:
		return errors.New("max sockets must be at least 1")
	case c.MaxOwnerWait < 0:
		return fmt.Errorf("max owner wait %v must not be negative", c.MaxOwnerWait)
	}
	return nil
}

// Info is a socket in CLOSE-WAIT as All reports it: a small value, no
// event, so that a reader can walk 100,000 sockets cheaply.
type Info struct {
	Sock                  uint64
	Family                events.Family
	LocalAddr, RemoteAddr netip.Addr
	LocalPort, RemotePort uint16
	NetNS                 uint32
	CgroupID              uint64
	// Dir says which port is the service (0: unknown).
	Dir events.Direction
	// FinBootNS is when the peer's FIN arrived (CLOCK_BOOTTIME ns), or when
	// tcptrace first saw the socket if not AgeKnown.
	FinBootNS int64
	AgeKnown  bool
	// Stuck is true once the socket was reported stuck.
	Stuck bool
	// DiagKnown: a stuck report read the socket's receive state from the
	// kernel (sock_diag); ReadEOF and UnreadData say what the last such
	// read found. ReadEOF: the application had read the peer's FIN (end of
	// file) and not closed, a close-path bug. UnreadData: data from the
	// peer was waiting unread. Neither: the application had read all the
	// data but not the FIN, that is, not read since the peer closed.
	DiagKnown, ReadEOF, UnreadData bool
	// Owners as last found; shared, never modified: do not change it.
	Owners []events.Owner
}

// Verifier reports whether a socket is still in CLOSE-WAIT. It lets the
// tracker drop a socket whose exit event was lost instead of reporting it
// stuck for ever.
type Verifier func(socket *events.Event) (bool, error)

// Refresher brings a stuck event's inode and owner fields up to date (a
// socket gets a file when accepted; descriptors move between processes);
// the tracker keeps what it finds. It returns how long to wait before
// asking again when the owners could not be looked up yet (a scan budget
// spent), 0 when its answer is final: a first report is then held back,
// up to Config.MaxOwnerWait past its due time, rather than go out without
// an owner.
type Refresher func(stuck *events.Event) (retry time.Duration)

// entry is one socket in CLOSE-WAIT, kept to 128 bytes (a whole event is
// about 350): a leak of 100,000 sockets is what this table is for.
type entry struct {
	sock, key, inode, cgroupID uint64
	finBootNS                  int64
	// Next stuck report, boot-time ns; index is the position in the heap,
	// -1 once no more reports are due.
	due                   int64
	localAddr, remoteAddr [16]byte // IPv4 as ::ffff:a.b.c.d
	container             *container
	owners                []events.Owner
	index                 int32
	netns                 uint32
	localPort, remotePort uint16
	family                events.Family
	ownerSource           events.OwnerSource
	flags                 entryFlags
	// seen is the number of the last scan of the kernel table that found
	// the socket (see NewScan).
	seen uint8
}

type entryFlags uint8

const (
	ageKnown entryFlags = 1 << iota
	reportedStuck
	kernelTracked
	inbound // the direction, in two bits to keep the entry small
	outbound
	// What the last stuck report read of the socket (see Info).
	diagKnown
	readEOF
	unreadData
)

func (e *entry) dir() events.Direction {
	switch {
	case e.flags&inbound != 0:
		return events.DirInbound
	case e.flags&outbound != 0:
		return events.DirOutbound
	}
	return 0
}

// container is the container context of sockets, shared by all the
// sockets of a container through Tracker.containers.
type container struct{ id, podUID string }

// keep copies what the table needs of a close_wait event.
func (e *entry) keep(ev *events.Event, c *container) {
	*e = entry{
		sock: ev.Sock, key: ev.Key, inode: ev.Inode, cgroupID: ev.CgroupID, finBootNS: ev.FinBootNS,
		localAddr: ev.LocalAddr.As16(), remoteAddr: ev.RemoteAddr.As16(), container: c,
		owners: ev.Owners, netns: ev.NetNS, localPort: ev.LocalPort, remotePort: ev.RemotePort,
		family: ev.Family, ownerSource: ev.OwnerSource,
	}
	switch ev.Dir {
	case events.DirInbound:
		e.flags |= inbound
	case events.DirOutbound:
		e.flags |= outbound
	}
	if ev.AgeKnown {
		e.flags |= ageKnown
	}
	if ev.KernelTracked {
		e.flags |= kernelTracked
	}
}

// socket rebuilds the socket's close_wait event, less its time.
func (e *entry) socket() events.Event {
	ev := events.Event{
		Kind: events.KindCloseWait, Sock: e.sock, Key: e.key, Inode: e.inode, CgroupID: e.cgroupID,
		FinBootNS: e.finBootNS, LocalAddr: e.addr(e.localAddr), RemoteAddr: e.addr(e.remoteAddr),
		Owners: e.owners, NetNS: e.netns, LocalPort: e.localPort, RemotePort: e.remotePort,
		Family: e.family, OwnerSource: e.ownerSource, Dir: e.dir(),
		AgeKnown: e.flags&ageKnown != 0, KernelTracked: e.flags&kernelTracked != 0,
	}
	if e.container != nil {
		ev.ContainerID, ev.PodUID = e.container.id, e.container.podUID
	}
	if e.ownerSource == events.OwnerNoFile {
		ev.Owners = nil // the listener's (see Expire)
	}
	return ev
}

func (e *entry) addr(a [16]byte) netip.Addr {
	if e.family == events.FamilyIPv4 {
		return netip.AddrFrom4([4]byte(a[12:]))
	}
	return netip.AddrFrom16(a)
}

// Tracker is the correlation table.
type Tracker struct {
	cfg   Config
	clock bootclock.Clock

	mu        sync.Mutex
	byID      map[uint64]*entry
	due       dueHeap
	tableFull uint64
	vanished  uint64
	stuck     int    // entries reported stuck
	deferred  uint64 // stuck reports held back for their owner
	scan      uint8  // number of the current scan of the kernel table
	// Entries of closed sockets, reused so that steady churn allocates
	// nothing; never more than the table holds.
	free []*entry
	// The stuck report being built: Expire hands out its address.
	report events.Event
	// One container value per container context: pods come and go, so
	// this starts over when it reaches maxContainers.
	containers map[container]*container
}

const maxContainers = 4096

// New returns an empty tracker. cfg must be valid.
func New(cfg Config, clock bootclock.Clock) *Tracker {
	return &Tracker{cfg: cfg, clock: clock, byID: make(map[uint64]*entry)}
}

// Observe correlates ev and passes it, completed, to emit: app_close and
// abort get the FIN time and was_stuck from the table when the kernel could
// not supply them. A close_wait event is tracked. emit runs after the
// table is unlocked; it may be nil.
func (t *Tracker) Observe(ev *events.Event, emit func(*events.Event)) {
	t.mu.Lock()
	switch ev.Kind {
	case events.KindCloseWait:
		t.insert(ev)
	case events.KindAppClose, events.KindAbort:
		if e, ok := t.byID[ev.Sock]; ok {
			switch {
			case ev.AgeKnown || ev.BootNS < e.finBootNS:
			case e.flags&ageKnown != 0:
				ev.FinBootNS = e.finBootNS
				ev.AgeNS, ev.AgeKnown = ev.BootNS-e.finBootNS, true
			case ev.FinBootNS == 0 || e.finBootNS < ev.FinBootNS:
				// The age from first sight, a lower bound as for stuck.
				ev.FinBootNS = e.finBootNS
				ev.AgeNS = ev.BootNS - e.finBootNS
			}
			ev.WasStuck = e.flags&reportedStuck != 0
			// The descriptors are gone by now, unless the event found
			// them still open: report who last held them, and the
			// container context found through them.
			if len(e.owners) > 0 && len(ev.Owners) == 0 && e.ownerSource != events.OwnerNoFile {
				ev.Owners, ev.OwnerSource = e.owners, events.OwnerLastSeen
			}
			if ev.ContainerID == "" && ev.PodUID == "" && e.container != nil {
				ev.ContainerID, ev.PodUID = e.container.id, e.container.podUID
			}
			t.remove(e)
		}
	}
	t.mu.Unlock()
	if emit != nil {
		emit(ev)
	}
}

// Insert tracks the socket of a close_wait event without emitting it,
// unless it is tracked already. It reports whether it was inserted.
func (t *Tracker) Insert(ev *events.Event) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.byID[ev.Sock]; ok {
		return false
	}
	return t.insert(ev)
}

func (t *Tracker) insert(ev *events.Event) bool {
	if old, ok := t.byID[ev.Sock]; ok {
		// A reused id means the earlier socket's exit was never seen.
		t.remove(old)
	}
	if len(t.byID) >= t.cfg.MaxSockets {
		t.tableFull++
		return false
	}
	var e *entry
	if n := len(t.free); n > 0 {
		e, t.free = t.free[n-1], t.free[:n-1]
	} else {
		e = new(entry)
	}
	e.keep(ev, t.container(ev.ContainerID, ev.PodUID))
	e.due = ev.FinBootNS + t.cfg.Threshold.Nanoseconds()
	e.seen = t.scan
	t.byID[ev.Sock] = e
	heap.Push(&t.due, e)
	return true
}

// container returns the shared value for a container context, nil for
// none.
func (t *Tracker) container(id, podUID string) *container {
	if id == "" && podUID == "" {
		return nil
	}
	k := container{id, podUID}
	if c, ok := t.containers[k]; ok {
		return c
	}
	if t.containers == nil || len(t.containers) >= maxContainers {
		t.containers = make(map[container]*container)
	}
	c := &k
	t.containers[k] = c
	return c
}

func (t *Tracker) remove(e *entry) {
	delete(t.byID, e.sock)
	if e.index >= 0 {
		heap.Remove(&t.due, int(e.index))
	}
	if e.flags&reportedStuck != 0 {
		t.stuck--
	}
	// Owners are dropped now, not when the entry is reused: a free entry
	// must not keep a closed socket's owner slice alive.
	e.owners = nil
	if len(t.free) < t.cfg.MaxSockets {
		t.free = append(t.free, e)
	}
}

// Expire emits a stuck event for every socket whose report is due at
// nowBoot (CLOCK_BOOTTIME ns). The caller must have passed every event
// before nowBoot to Observe, or a close still in flight would be overtaken.
// verify, if not nil, is asked about each socket first; a socket it says
// has left CLOSE-WAIT is dropped and counted in Vanished. refresh, if not
// nil, updates each report's owners before it is emitted, and may hold a
// first report back (see Refresher). The callbacks run with the table
// unlocked; only the goroutine that calls Observe may call Expire.
func (t *Tracker) Expire(nowBoot int64, verify Verifier, refresh Refresher, emit func(*events.Event)) error {
	ev := &t.report
	for {
		t.mu.Lock()
		if len(t.due) == 0 || t.due[0].due > nowBoot {
			t.mu.Unlock()
			return nil
		}
		// Out of the heap while its report is made; still in byID, so
		// readers see it, and nothing else changes the table meanwhile.
		e := heap.Pop(&t.due).(*entry)
		*ev = e.socket()
		firstDue := e.finBootNS + t.cfg.Threshold.Nanoseconds()
		t.mu.Unlock()

		if verify != nil {
			still, err := verify(ev)
			if err != nil {
				t.mu.Lock()
				heap.Push(&t.due, e)
				t.mu.Unlock()
				return err
			}
			if !still {
				t.mu.Lock()
				t.vanished++
				t.remove(e)
				t.mu.Unlock()
				continue
			}
		}
		ev.Kind = events.KindStuck
		ev.Time = t.clock.Wall(nowBoot)
		ev.BootNS = nowBoot
		ev.AgeNS = nowBoot - e.finBootNS
		ev.ThresholdNS = t.cfg.Threshold.Nanoseconds()
		var retry time.Duration
		if refresh != nil {
			retry = refresh(ev)
		}

		t.mu.Lock()
		if retry > 0 && e.flags&reportedStuck == 0 && nowBoot+retry.Nanoseconds() <= firstDue+t.cfg.MaxOwnerWait.Nanoseconds() {
			e.due = nowBoot + retry.Nanoseconds()
			heap.Push(&t.due, e)
			t.deferred++
			t.mu.Unlock()
			continue
		}
		if refresh != nil {
			// Kept whatever was found: holders no longer found are not
			// holders, and a later close must not name them.
			e.inode, e.owners, e.ownerSource = ev.Inode, ev.Owners, ev.OwnerSource
			if ev.OwnerSource == events.OwnerNoFile && ev.Listener != nil {
				// Nobody holds it: its holders, for the report and the
				// metrics, are the listener's, which do not accept.
				e.owners = ev.Listener.Owners
			}
			if ev.ContainerID != "" || ev.PodUID != "" {
				e.container = t.container(ev.ContainerID, ev.PodUID)
			}
			// A failed read keeps what an earlier one found.
			if ev.DiagKnown {
				e.flags = e.flags&^(readEOF|unreadData) | diagKnown
				if ev.ReadEOF {
					e.flags |= readEOF
				}
				if ev.UnreadBytes > 0 {
					e.flags |= unreadData
				}
			}
		}
		if e.flags&reportedStuck == 0 {
			e.flags |= reportedStuck
			t.stuck++
		}
		if t.cfg.Repeat > 0 {
			e.due += t.cfg.Repeat.Nanoseconds()
			if e.due <= nowBoot {
				// After a pause (suspend, a stalled loop) do not burst.
				e.due = nowBoot + t.cfg.Repeat.Nanoseconds()
			}
			heap.Push(&t.due, e)
		}
		t.mu.Unlock()
		emit(ev)
	}
}

// NewScan starts a whole read of the kernel's CLOSE-WAIT table: Seen marks
// the tracked sockets it finds, and Unseen then lists those it did not.
func (t *Tracker) NewScan() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.scan++
}

// Seen marks the socket as found by the current read and reports whether
// it is tracked.
func (t *Tracker) Seen(sock uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.byID[sock]
	if ok {
		e.seen = t.scan
	}
	return ok
}

// Unseen lists the tracked sockets that the kernel table tracks, with a
// FIN at or before dueBoot, that the current read did not find: their exit
// happened, and its record is on the way or was lost (see Recheck).
func (t *Tracker) Unseen(dueBoot int64) []uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []uint64
	for sock, e := range t.byID {
		if e.flags&kernelTracked != 0 && e.finBootNS <= dueBoot && e.seen != t.scan {
			out = append(out, sock)
		}
	}
	return out
}

// Recheck asks verify whether a tracked socket is still in CLOSE-WAIT and
// drops it, counted in Vanished, if not: its exit record was lost. Call it
// only once every record up to the time its absence was seen has been
// observed. It runs verify with the table unlocked.
func (t *Tracker) Recheck(sock uint64, verify Verifier) error {
	t.mu.Lock()
	e, ok := t.byID[sock]
	if !ok {
		t.mu.Unlock()
		return nil // its exit arrived
	}
	ev := e.socket()
	t.mu.Unlock()
	still, err := verify(&ev)
	if err != nil || still {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.byID[sock]; ok && cur == e {
		t.vanished++
		t.remove(e)
	}
	return nil
}

// Has reports whether the socket with this id is tracked.
func (t *Tracker) Has(sock uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.byID[sock]
	return ok
}

// Len returns the number of sockets in CLOSE-WAIT being tracked.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID)
}

// TableFull counts sockets not tracked because the table was full.
func (t *Tracker) TableFull() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.tableFull
}

// Vanished counts sockets dropped because they had left CLOSE-WAIT although
// their exit event never arrived (it was lost, and counted as lost).
func (t *Tracker) Vanished() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.vanished
}

// Stuck returns the number of tracked sockets reported stuck.
func (t *Tracker) Stuck() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stuck
}

// Deferred counts stuck reports held back for their owner (see Refresher).
func (t *Tracker) Deferred() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.deferred
}

// All iterates over the tracked sockets, holding the table's lock: the
// loop body must be quick and must not call the Tracker.
func (t *Tracker) All() iter.Seq[Info] {
	return func(yield func(Info) bool) {
		t.mu.Lock()
		defer t.mu.Unlock()
		for _, e := range t.byID {
			info := Info{
				Sock: e.sock, Family: e.family, LocalAddr: e.addr(e.localAddr), RemoteAddr: e.addr(e.remoteAddr),
				LocalPort: e.localPort, RemotePort: e.remotePort, NetNS: e.netns, CgroupID: e.cgroupID, Dir: e.dir(),
				FinBootNS: e.finBootNS, AgeKnown: e.flags&ageKnown != 0, Stuck: e.flags&reportedStuck != 0,
				DiagKnown: e.flags&diagKnown != 0, ReadEOF: e.flags&readEOF != 0, UnreadData: e.flags&unreadData != 0,
				Owners: e.owners,
			}
			if !yield(info) {
				return
			}
		}
	}
}

// dueHeap orders entries by their next stuck report.
type dueHeap []*entry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = int32(i)
	h[j].index = int32(j)
}
func (h *dueHeap) Push(x any) {
	e := x.(*entry)
	e.index = int32(len(*h))
	*h = append(*h, e)
}
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.index = -1
	*h = old[:len(old)-1]
	return e
}
