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
//     in /proc (a full scan), whatever its network namespace. Full scans are
//     node-wide because their budget is: a leak spread over many namespaces
//     (one per Kubernetes pod) would otherwise need one scan per namespace,
//     one per budget window, and the namespaces waiting for their turn would
//     be reported unresolved. One node-wide scan reads each table once; a
//     scan per namespace read that namespace's tables and stat'ed every
//     other process, so covering all namespaces that way cost more, not less.
//   - Full scans run at most once per Config.MinRescan, and not until
//     Config.ScanShare times the last one's duration has passed since it;
//     targeted scans of one process at most once per MinRescan. So a window
//     costs at most one full scan and one targeted read per process, plus
//     one readlink and one stat read per cached holder per Resolve.
//   - A miss that may not scan yet returns SourceUnresolved. ResolveWait
//     also says how long until a full scan may run, so that a caller can
//     hold a report back that long rather than send it unresolved.
//
// Cache validity. Verification proves each cached holder still holds the
// socket, but cannot reveal holders that appeared later (a fork, a dup into
// another process through SCM_RIGHTS, pidfd_getfd). Each entry therefore
// records when a full scan last found the socket ("confirmed"). Every full
// scan, whatever socket triggered it, re-records all sockets it sees, in
// every namespace, so a new holder shows up at the next full scan. In
// addition a hit whose confirmation is older than Config.MaxAge triggers a
// full scan (if the rate limits allow), so a quiet cache cannot hide a new
// holder for longer than about MaxAge plus the rate limits' wait (MinRescan,
// or ScanShare times the last scan's duration). Entries learned from a hint
// scan alone have never been confirmed: the hint answers the first Resolve
// cheaply and the next Resolve of that socket runs a full scan when
// allowed. A cache entry the last full scan did not refresh is not
// distrusted as such: its holders have just been verified, so the socket
// reached them while the scan ran or after it (or their table was
// unreadable to the scan), and its old confirmation brings the next full
// scan within MaxAge anyway.
package owner

import (
	"math"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// MaxCmdline bounds Owner.Cmdline, in bytes.
const MaxCmdline = 256

// Owner is one process holding a descriptor of the socket: FD is the
// lowest descriptor number it holds the socket on. The Process fields come
// from /proc/<pid>: comm without the newline; exe's link, "" if unreadable
// (kernel thread, gone); cmdline with NULs turned into spaces, at most
// MaxCmdline bytes; the real uid from the Uid: line of status. All the
// Owners of one process share its Process.
type Owner = events.Owner

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
	MinRescan  time.Duration // full scans, and scans of one pid, at most this often (default 1s)
	MaxAge     time.Duration // a hit not confirmed by a full scan for this long triggers one (default 10s)
	MaxEntries int           // bound on cached socket inodes (default 1<<18); oldest evicted
	// ScanShare bounds the time spent in full scans: after a scan that
	// took d, no full scan runs for ScanShare*d, so scanning takes at most
	// about 1/ScanShare of a CPU however many descriptors the node has.
	// Default 50; negative disables the bound (tests that rescan back to
	// back).
	ScanShare int
}

// Stats counts the work done, for the closing figures and tests.
type Stats struct {
	FullScans   uint64 // full scans of every process in /proc
	PidsScanned uint64 // descriptor tables read
	FDsRead     uint64 // descriptor links read, by scans and by re-verification
	CacheHits   uint64 // Resolve calls answered by a verified cache entry
	CacheMisses uint64 // Resolve calls that had to scan (or were rate limited)
	Evictions   uint64 // cache entries dropped for MaxEntries
}

// holder is one process holding a socket, at the lowest fd seen. Pids and
// descriptor numbers fit in 32 bits, which halves the cache.
type holder struct{ pid, fd int32 }

// entry is what the cache knows about one socket. Entries are kept by value
// and small: a leak means 100,000 of them.
type entry struct {
	holders []holder // sorted by pid, one per pid
	// confirmed is when the last full scan that found the socket ran, as
	// Resolver.clock says; 0 if none has.
	confirmed int64
	// seq orders entries by when they were last recorded, for eviction.
	seq uint64
}

// Resolver maps socket inodes to the processes holding them. It is safe for
// concurrent use; calls are serialized, including their /proc reads.
type Resolver struct {
	mu      sync.Mutex
	cfg     Config
	epoch   time.Time // origin of entry.confirmed
	entries map[uint64]entry
	seq     uint64            // the last entry.seq given
	details map[int]details   // by pid; details.start detects pid reuse
	pidScan map[int]time.Time // last read of a pid's descriptor table
	// When the last full scan started (zero: none yet) and how long it
	// took: MinRescan and ScanShare both count from it.
	lastFull time.Time
	lastCost time.Duration
	stats    Stats
	pinned   uint64 // inode being resolved, never evicted; 0 = none
	// now is the clock the rate limits and confirmations count by:
	// time.Now, or a test's own (scan costs are measured on the real one).
	now func() time.Time
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
		cfg:     cfg,
		now:     time.Now,
		epoch:   time.Now(),
		entries: make(map[uint64]entry),
		details: make(map[int]details),
		pidScan: make(map[int]time.Time),
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
	if _, ok := r.entries[ino]; !ok {
		r.stats.CacheMisses++
		return nil, SourceUnresolved
	}
	now := r.now()
	if !r.verify(ino, now) {
		r.stats.CacheMisses++
		return nil, SourceUnresolved
	}
	r.stats.CacheHits++
	return r.owners(ino, now)
}

// Resolve returns the holders of socket inode ino, sorted by pid. hints are
// pids to scan first, such as the task the kernel saw using the socket; a
// thread id is mapped to its process. netns, the inode of the socket's
// network namespace, is ignored: full scans cover every namespace (see the
// package doc). It stays for the callers that pass it.
func (r *Resolver) Resolve(ino uint64, netns uint64, hints []int) ([]Owner, Source) {
	owners, src, _ := r.ResolveWait(ino, netns, hints)
	return owners, src
}

// ResolveWait is Resolve, and also says whether an unresolved answer may
// change soon. wait is 0 when the answer is final for now: owners found,
// or a full scan ran in this call and did not find the socket, or ino is
// 0. It is positive when the socket is not cached (or its cached holders
// are all gone) and no full scan could run, for MinRescan or for the
// ScanShare budget: then it is how long until one may, at least 1ms. A
// caller about to report the socket can wait that long and ask again
// rather than report it unresolved.
func (r *Resolver) ResolveWait(ino uint64, netns uint64, hints []int) ([]Owner, Source, time.Duration) {
	if ino == 0 {
		return nil, SourceUnresolved, 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pinned = ino
	defer func() { r.pinned = 0 }()
	now := r.now()

	scanned := false // a full scan ran in this call
	if _, ok := r.entries[ino]; ok && r.verify(ino, now) {
		if c := r.entries[ino].confirmed; (c == 0 || r.clock(now)-c > r.cfg.MaxAge.Nanoseconds()) && r.fullWait(now) == 0 {
			r.fullScan(now)
			scanned = true
		}
		if owners, src := r.owners(ino, now); src == SourceProc {
			r.stats.CacheHits++
			return owners, src, 0
		}
		// Every verified holder exited before its details were read: a
		// miss after all.
	}

	r.stats.CacheMisses++
	for _, pid := range hints {
		r.scanHint(pid, now)
	}
	if owners, src := r.owners(ino, now); src == SourceProc {
		return owners, src, 0
	}
	if scanned {
		return nil, SourceUnresolved, 0
	}
	if wait := r.fullWait(now); wait > 0 {
		return nil, SourceUnresolved, max(wait, time.Millisecond)
	}
	r.fullScan(now)
	owners, src := r.owners(ino, now)
	return owners, src, 0
}

// ScanAllowedIn returns how long until a full scan may run: 0 if one may
// run now.
func (r *Resolver) ScanAllowedIn() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fullWait(r.now())
}

// Forget drops a socket from the cache (called when it closes).
func (r *Resolver) Forget(ino uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.entries, ino)
}

// Stats returns the counters so far.
func (r *Resolver) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// verify drops the holders of cached socket ino whose fd no longer refers
// to it, rescans their tables (rate limited) in case they hold it on another
// fd, and removes the entry if no holder is left. It reports whether the
// entry remains.
func (r *Resolver) verify(ino uint64, now time.Time) bool {
	e := r.entries[ino]
	kept := e.holders[:0]
	var lost []int
	for _, h := range e.holders {
		r.stats.FDsRead++
		if holdsFD(r.cfg.ProcRoot, int(h.pid), int(h.fd), ino) {
			kept = append(kept, h)
		} else {
			lost = append(lost, int(h.pid))
		}
	}
	e.holders = kept
	r.entries[ino] = e
	for _, pid := range lost {
		if r.pidAllowed(pid, now) {
			r.scanPid(pid, now, 0)
		}
	}
	// The rescans may have changed or evicted the entry; look it up again.
	cur, ok := r.entries[ino]
	if ok && len(cur.holders) == 0 {
		delete(r.entries, ino)
		return false
	}
	return ok
}

// clock turns a time into entry.confirmed's scale: positive, so that 0 can
// mean never.
func (r *Resolver) clock(t time.Time) int64 {
	return t.Sub(r.epoch).Nanoseconds() + 1
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
	r.scanPid(tgid, now, 0)
}

func (r *Resolver) pidAllowed(pid int, now time.Time) bool {
	t, ok := r.pidScan[pid]
	return !ok || now.Sub(t) >= r.cfg.MinRescan
}

// fullWait returns how long after now a full scan may run, 0 if it may run
// now: full scans start at least MinRescan apart, and at least ScanShare
// times the last one's duration after it.
func (r *Resolver) fullWait(now time.Time) time.Duration {
	if r.lastFull.IsZero() {
		return 0
	}
	gap := r.cfg.MinRescan
	if n := time.Duration(r.cfg.ScanShare); n > 0 {
		if r.lastCost > math.MaxInt64/n {
			gap = math.MaxInt64 // absurd, but no overflow
		} else {
			gap = max(gap, n*r.lastCost)
		}
	}
	return max(gap-now.Sub(r.lastFull), 0)
}

// scanPid records every socket in pid's descriptor table. confirmed is the
// full scan's time (Resolver.clock), or zero for a targeted scan.
func (r *Resolver) scanPid(pid int, now time.Time, confirmed int64) {
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

// fullScan scans every process in /proc, in whatever network namespace:
// one scan answers for the sockets of all namespaces. /proc lists only
// thread group leaders, which is what we want: threads share the leader's
// table. now is the caller's time, which the scan's confirmations and the
// rate limits count from; its cost is measured from its own start.
func (r *Resolver) fullScan(now time.Time) {
	r.lastFull = now
	r.stats.FullScans++
	start := time.Now()
	defer func() { r.lastCost = time.Since(start) }()
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
		r.scanPid(pid, now, r.clock(now))
	}
	// Drop bookkeeping that can no longer matter, so it stays bounded by
	// the number of live processes.
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
}

// record notes that pid holds socket ino at fd (its lowest), replacing what
// an earlier scan said about that pid.
func (r *Resolver) record(ino uint64, pid, fd int, confirmed int64) {
	e, known := r.entries[ino]
	h := holder{int32(pid), int32(fd)}
	i, found := slices.BinarySearchFunc(e.holders, h.pid, func(h holder, pid int32) int { return int(h.pid - pid) })
	if found {
		e.holders[i].fd = h.fd
	} else {
		e.holders = slices.Insert(e.holders, i, h)
	}
	e.confirmed = max(e.confirmed, confirmed)
	r.seq++
	e.seq = r.seq
	r.entries[ino] = e
	if !known && len(r.entries) > r.cfg.MaxEntries {
		r.evict()
	}
}

// evict drops the least recently recorded entries: down to 7/8 of
// MaxEntries at once, so that the sort it takes is paid once per
// MaxEntries/8 new sockets, not per socket. The socket being resolved is
// kept: the scan that finds it must not lose it. The newest entry always
// stays.
func (r *Resolver) evict() {
	drop := len(r.entries) - r.cfg.MaxEntries + r.cfg.MaxEntries/8
	seqs := make([]uint64, 0, len(r.entries))
	for ino, e := range r.entries {
		if ino != r.pinned {
			seqs = append(seqs, e.seq)
		}
	}
	if drop > len(seqs)-1 {
		drop = len(seqs) - 1
	}
	if drop <= 0 {
		return
	}
	slices.Sort(seqs)
	cutoff := seqs[drop-1]
	for ino, e := range r.entries {
		if e.seq <= cutoff && ino != r.pinned {
			delete(r.entries, ino)
			r.stats.Evictions++
		}
	}
}

// owners turns the cached holders of ino into Owners, dropping holders that
// exited since they were seen.
func (r *Resolver) owners(ino uint64, now time.Time) ([]Owner, Source) {
	e, ok := r.entries[ino]
	if !ok {
		return nil, SourceUnresolved
	}
	var out []Owner
	kept := e.holders[:0]
	for _, h := range e.holders {
		d, ok := r.detailsOf(int(h.pid), now)
		if !ok {
			continue
		}
		kept = append(kept, h)
		out = append(out, Owner{Process: d.proc, FD: int(h.fd)})
	}
	if len(out) == 0 {
		delete(r.entries, ino)
		return nil, SourceUnresolved
	}
	e.holders = kept
	r.entries[ino] = e
	return out, SourceProc
}

// detailsOf returns pid's details, read once per process incarnation: one
// stat read tells whether the cached ones still belong to the same process.
// That check is skipped for details checked less than detailsRecheck ago:
// a stuck report of 100,000 sockets of one process then costs one stat
// read, not 100,000. The holder itself was just verified by its fd link,
// so at worst a pid reused within that window by a process that was handed
// the very socket is reported with its predecessor's details.
func (r *Resolver) detailsOf(pid int, now time.Time) (details, bool) {
	d, ok := r.details[pid]
	if ok && now.Sub(d.checked) < detailsRecheck {
		return d, true
	}
	start, err := readStart(r.cfg.ProcRoot, pid)
	if err != nil {
		return details{}, false
	}
	if !ok || d.start != start {
		if d, err = readDetails(r.cfg.ProcRoot, pid); err != nil {
			return details{}, false
		}
	}
	d.checked = now
	r.details[pid] = d
	return d, true
}

// detailsRecheck is how long a process's details are trusted without
// checking its start time again.
const detailsRecheck = 100 * time.Millisecond
