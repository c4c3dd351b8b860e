// Package owner names the processes holding a socket, given the socket's
// inode number, the way `ss -p` does: by reading the links in
// /proc/<pid>/fd, which read "socket:[<inode>]" for sockets.
//
// tcptrace asks this for every socket stuck in CLOSE-WAIT, and a leak can
// mean 100,000 such sockets, so a Resolver caches what it learns and bounds
// what it spends:
//
//   - Any scan of a process's descriptor table records all of its sockets,
//     so one scan answers for every socket of that process.
//   - A cached answer is re-verified on every Resolve with one readlink per
//     holder, so a holder that closed or passed on its descriptor is never
//     reported. A holder whose link no longer matches has its table rescanned
//     (it may hold the socket on another fd); if no holder remains, the
//     lookup proceeds as a miss.
//   - A miss scans the hinted pids, then, if still not found, every process
//     in the socket's network namespace (a full scan).
//   - Full scans run at most once per Config.MinRescan per network namespace,
//     and targeted scans of one process at most once per MinRescan. Within
//     that window a miss returns SourceUnresolved; the caller retries later.
//     So a window costs at most one full scan per namespace asked about and
//     one targeted read per process, plus one readlink and one stat read per
//     cached holder per Resolve.
//
// Cache validity. Verification proves each cached holder still holds the
// socket, but cannot reveal holders that appeared later (a fork, a dup into
// another process through SCM_RIGHTS, pidfd_getfd). Each entry therefore
// records when a full scan last found the socket ("confirmed"). Every full
// scan, whatever socket triggered it, re-records all sockets it sees, so a
// new holder shows up at the next full scan of the namespace. In addition a
// hit whose confirmation is older than Config.MaxAge triggers a full scan
// (if the rate limit allows), so a quiet cache cannot hide a new holder for
// longer than about MaxAge+MinRescan. Entries learned from a hint scan alone
// have never been confirmed: the hint answers the first Resolve cheaply and
// the next Resolve of that socket runs a full scan when allowed. A cache
// entry older than the last full scan is not distrusted as such: the full
// scan would have refreshed it had it seen the socket, and its holders have
// just been verified, so they hold it from outside the scanned namespace.
package owner

import (
	"container/list"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

// MaxCmdline bounds Owner.Cmdline, in bytes.
const MaxCmdline = 256

// Owner is one process holding a descriptor of the socket.
type Owner struct {
	PID     int
	Comm    string // /proc/<pid>/comm without the newline
	Exe     string // readlink /proc/<pid>/exe; "" if unreadable (kernel thread, gone)
	Cmdline string // /proc/<pid>/cmdline, NULs turned into spaces, at most MaxCmdline bytes
	UID     uint32 // real uid, from the Uid: line of /proc/<pid>/status
	FD      int    // the descriptor number in that process (lowest one if several)
}

// Source says how owners were determined.
type Source uint8

const (
	// SourceUnresolved: no holder found (none, gone, or rate limited).
	SourceUnresolved Source = iota
	// SourceProc: found in /proc now, or cached and re-verified just now.
	SourceProc
)

func (s Source) String() string {
	switch s {
	case SourceUnresolved:
		return "unresolved"
	case SourceProc:
		return "proc"
	}
	return "Source(" + strconv.Itoa(int(s)) + ")"
}

// Config tunes a Resolver; zero fields take the defaults.
type Config struct {
	ProcRoot   string        // "/proc" by default; tests may point elsewhere
	MinRescan  time.Duration // full scans of a netns, and scans of one pid, at most this often (default 1s)
	MaxAge     time.Duration // a hit not confirmed by a full scan for this long triggers one (default 10s)
	MaxEntries int           // bound on cached socket inodes (default 1<<18); oldest evicted
	// ScanShare bounds the time spent in full scans: after a scan of any
	// namespace that took d, no full scan runs for ScanShare*d, so scanning
	// takes at most about 1/ScanShare of a CPU however many descriptors and
	// namespaces the node has. Default 50; negative disables the bound
	// (tests that rescan back to back).
	ScanShare int
}

// Stats counts the work done, for the closing figures and tests.
type Stats struct {
	FullScans   uint64 // full scans of a network namespace (or of all, for netns 0)
	PidsScanned uint64 // descriptor tables read
	PidsSkipped uint64 // processes a full scan skipped for being in another netns
	FDsRead     uint64 // descriptor links read, by scans and by re-verification
	CacheHits   uint64 // Resolve calls answered by a verified cache entry
	CacheMisses uint64 // Resolve calls that had to scan (or were rate limited)
	Evictions   uint64 // cache entries dropped for MaxEntries
}

// holder is one process holding a socket, at the lowest fd seen.
type holder struct{ pid, fd int }

// entry is what the cache knows about one socket.
type entry struct {
	ino       uint64
	holders   []holder  // sorted by pid, one per pid
	confirmed time.Time // last full scan that found the socket; zero if none
	elem      *list.Element
}

// Resolver maps socket inodes to the processes holding them. It is safe for
// concurrent use; calls are serialized, including their /proc reads.
type Resolver struct {
	mu       sync.Mutex
	cfg      Config
	entries  map[uint64]*entry
	order    *list.List           // of *entry, least recently recorded first
	details  map[int]details      // by pid; details.start detects pid reuse
	pidScan  map[int]time.Time    // last read of a pid's descriptor table
	lastFull map[uint64]time.Time // last full scan, by netns (0 = all)
	// The last full scan of any namespace, and what it cost: the budget
	// of ScanShare is for the node, not for each namespace.
	lastAny     time.Time
	lastAnyCost time.Duration
	stats       Stats
	pinned      uint64 // inode being resolved, never evicted; 0 = none
}

// NewResolver returns a Resolver with cfg's zero fields defaulted.
func NewResolver(cfg Config) *Resolver {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.MinRescan <= 0 {
		cfg.MinRescan = time.Second
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = 10 * time.Second
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 1 << 18
	}
	if cfg.ScanShare == 0 {
		cfg.ScanShare = 50
	}
	return &Resolver{
		cfg:      cfg,
		entries:  make(map[uint64]*entry),
		order:    list.New(),
		details:  make(map[int]details),
		pidScan:  make(map[int]time.Time),
		lastFull: make(map[uint64]time.Time),
	}
}

// Cached answers from what earlier scans found, re-verified, without
// scanning: for callers on a hot path, where a miss is acceptable.
func (r *Resolver) Cached(ino uint64) ([]Owner, Source) {
	if ino == 0 {
		return nil, SourceUnresolved
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.entries[ino]
	if e == nil {
		r.stats.CacheMisses++
		return nil, SourceUnresolved
	}
	r.verify(e, time.Now())
	if r.entries[ino] == nil {
		r.stats.CacheMisses++
		return nil, SourceUnresolved
	}
	r.stats.CacheHits++
	return r.owners(ino)
}

// Resolve returns the holders of socket inode ino, sorted by pid. netns is
// the inode of the socket's network namespace (0 = unknown): full scans
// look only at processes in it. hints are pids to scan first, such as the
// task the kernel saw using the socket; a thread id is mapped to its
// process.
func (r *Resolver) Resolve(ino uint64, netns uint64, hints []int) ([]Owner, Source) {
	if ino == 0 {
		return nil, SourceUnresolved
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pinned = ino
	defer func() { r.pinned = 0 }()
	now := time.Now()

	if e := r.entries[ino]; e != nil {
		r.verify(e, now)
		if e = r.entries[ino]; e != nil {
			r.stats.CacheHits++
			if now.Sub(e.confirmed) > r.cfg.MaxAge && r.fullAllowed(netns, now) {
				r.fullScan(netns, now)
			}
			return r.owners(ino)
		}
	}

	r.stats.CacheMisses++
	for _, pid := range hints {
		r.scanHint(pid, now)
	}
	if r.entries[ino] == nil && r.fullAllowed(netns, now) {
		r.fullScan(netns, now)
	}
	return r.owners(ino)
}

// Forget drops a socket from the cache (called when it closes).
func (r *Resolver) Forget(ino uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[ino]; e != nil {
		r.remove(e)
	}
}

// Stats returns the counters so far.
func (r *Resolver) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// verify drops the holders of e whose fd no longer refers to the socket,
// rescans their tables (rate limited) in case they hold it on another fd,
// and removes e if no holder is left.
func (r *Resolver) verify(e *entry, now time.Time) {
	kept := e.holders[:0]
	var lost []int
	for _, h := range e.holders {
		r.stats.FDsRead++
		if holdsFD(r.cfg.ProcRoot, h.pid, h.fd, e.ino) {
			kept = append(kept, h)
		} else {
			lost = append(lost, h.pid)
		}
	}
	e.holders = kept
	for _, pid := range lost {
		if r.pidAllowed(pid, now) {
			r.scanPid(pid, now, time.Time{})
		}
	}
	// The rescans may have evicted e; look it up again.
	if cur := r.entries[e.ino]; cur != nil && len(cur.holders) == 0 {
		r.remove(cur)
	}
}

// scanHint scans the descriptor table of a hinted pid, unless it was read
// within MinRescan (its sockets are then already cached).
func (r *Resolver) scanHint(pid int, now time.Time) {
	if pid <= 0 || !r.pidAllowed(pid, now) {
		return
	}
	// Threads share the table but are not listed in /proc; report the
	// process.
	tgid, err := readTgid(r.cfg.ProcRoot, pid)
	if err != nil {
		return
	}
	if tgid != pid && !r.pidAllowed(tgid, now) {
		return
	}
	r.scanPid(tgid, now, time.Time{})
}

func (r *Resolver) pidAllowed(pid int, now time.Time) bool {
	t, ok := r.pidScan[pid]
	return !ok || now.Sub(t) >= r.cfg.MinRescan
}

// fullAllowed says whether a full scan of netns may run now: at most one
// per MinRescan for each namespace, and, whichever the namespace, not until
// ScanShare times the last scan's duration has passed since it.
func (r *Resolver) fullAllowed(netns uint64, now time.Time) bool {
	if t, ok := r.lastFull[netns]; ok && now.Sub(t) < r.cfg.MinRescan {
		return false
	}
	return r.cfg.ScanShare < 0 || r.lastAny.IsZero() ||
		now.Sub(r.lastAny) >= time.Duration(r.cfg.ScanShare)*r.lastAnyCost
}

// scanPid records every socket in pid's descriptor table. confirmed is the
// full scan's time, or zero for a targeted scan.
func (r *Resolver) scanPid(pid int, now, confirmed time.Time) {
	r.pidScan[pid] = now
	socks, n, err := socketFDs(r.cfg.ProcRoot, pid)
	r.stats.FDsRead += uint64(n)
	if err != nil {
		return // gone, or not ours to read: nothing to learn
	}
	r.stats.PidsScanned++
	for ino, fd := range socks {
		r.record(ino, pid, fd, confirmed)
	}
}

// fullScan scans every process in netns (all processes for 0). /proc lists
// only thread group leaders, which is what we want: threads share the
// leader's table.
func (r *Resolver) fullScan(netns uint64, now time.Time) {
	r.lastFull[netns] = now
	r.stats.FullScans++
	r.lastAny = now
	defer func() { r.lastAnyCost = time.Since(now) }()
	dir, err := os.Open(r.cfg.ProcRoot)
	if err != nil {
		return
	}
	names, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		return
	}
	live := make(map[int]bool, len(names))
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		live[pid] = true
		if netns != 0 {
			// Re-stat every time rather than cache pid→netns: it is one
			// stat, and setns/unshare would make a cache wrong.
			ns, err := netnsOf(r.cfg.ProcRoot, pid)
			if err != nil || ns != netns {
				r.stats.PidsSkipped++
				continue
			}
		}
		r.scanPid(pid, now, now)
	}
	// Drop bookkeeping that can no longer matter, so it stays bounded by
	// the number of live processes and namespaces.
	for pid := range r.details {
		if !live[pid] {
			delete(r.details, pid)
		}
	}
	for pid, t := range r.pidScan {
		if now.Sub(t) >= r.cfg.MinRescan {
			delete(r.pidScan, pid)
		}
	}
	for ns, t := range r.lastFull {
		if ns != netns && now.Sub(t) >= r.cfg.MinRescan {
			delete(r.lastFull, ns)
		}
	}
}

// record notes that pid holds socket ino at fd (its lowest), replacing what
// an earlier scan said about that pid.
func (r *Resolver) record(ino uint64, pid, fd int, confirmed time.Time) {
	e := r.entries[ino]
	if e == nil {
		e = &entry{ino: ino}
		e.elem = r.order.PushBack(e)
		r.entries[ino] = e
		for len(r.entries) > r.cfg.MaxEntries {
			old := r.order.Front().Value.(*entry)
			if old.ino == r.pinned {
				// The socket being resolved must survive the scan that
				// finds it; there are at least two entries here.
				r.order.MoveToBack(old.elem)
				continue
			}
			r.remove(old)
			r.stats.Evictions++
		}
	} else {
		r.order.MoveToBack(e.elem)
	}
	i, found := slices.BinarySearchFunc(e.holders, pid, func(h holder, pid int) int { return h.pid - pid })
	if found {
		e.holders[i].fd = fd
	} else {
		e.holders = slices.Insert(e.holders, i, holder{pid, fd})
	}
	if confirmed.After(e.confirmed) {
		e.confirmed = confirmed
	}
}

func (r *Resolver) remove(e *entry) {
	r.order.Remove(e.elem)
	delete(r.entries, e.ino)
}

// owners turns the cached holders of ino into Owners, dropping holders that
// exited since they were seen.
func (r *Resolver) owners(ino uint64) ([]Owner, Source) {
	e := r.entries[ino]
	if e == nil {
		return nil, SourceUnresolved
	}
	var out []Owner
	kept := e.holders[:0]
	for _, h := range e.holders {
		d, ok := r.detailsOf(h.pid)
		if !ok {
			continue
		}
		kept = append(kept, h)
		out = append(out, Owner{
			PID:     h.pid,
			Comm:    d.comm,
			Exe:     d.exe,
			Cmdline: d.cmdline,
			UID:     d.uid,
			FD:      h.fd,
		})
	}
	e.holders = kept
	if len(out) == 0 {
		r.remove(e)
		return nil, SourceUnresolved
	}
	return out, SourceProc
}

// detailsOf returns pid's details, read once per process incarnation: one
// stat read tells whether the cached ones still belong to the same process.
func (r *Resolver) detailsOf(pid int) (details, bool) {
	start, err := readStart(r.cfg.ProcRoot, pid)
	if err != nil {
		return details{}, false
	}
	if d, ok := r.details[pid]; ok && d.start == start {
		return d, true
	}
	d, err := readDetails(r.cfg.ProcRoot, pid)
	if err != nil {
		return details{}, false
	}
	r.details[pid] = d
	return d, true
}
