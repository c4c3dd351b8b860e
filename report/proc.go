package report

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// procTTL is how long a process's descriptor counts are reused.
const procTTL = time.Second

// fdUse is a process's descriptor use: open descriptors and the soft
// RLIMIT_NOFILE, 0 when unknown.
type fdUse struct {
	openFDs, fdLimit int
}

// procCache reads processes' descriptor use from /proc, each at most once
// per procTTL: counting a leaking process's descriptors means reading a
// directory of as many entries as it leaks. Safe for concurrent use.
type procCache struct {
	root string
	now  func() time.Time

	mu sync.Mutex
	m  map[int]procEntry
}

type procEntry struct {
	fdUse
	at time.Time
}

func newProcCache(root string, now func() time.Time) *procCache {
	if root == "" {
		root = "/proc"
	}
	return &procCache{root: root, now: now, m: make(map[int]procEntry)}
}

// get returns pid's descriptor use, from the cache when fresh.
func (c *procCache) get(pid int) fdUse {
	now := c.now()
	c.mu.Lock()
	e, ok := c.m[pid]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < procTTL && !now.Before(e.at) {
		return e.fdUse
	}
	dir := filepath.Join(c.root, strconv.Itoa(pid))
	u := fdUse{openFDs: countFDs(filepath.Join(dir, "fd")), fdLimit: readFDLimit(filepath.Join(dir, "limits"))}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Drop what went stale: the processes of rows that went away.
	if len(c.m) >= 64 {
		for p, old := range c.m {
			if now.Sub(old.at) >= procTTL {
				delete(c.m, p)
			}
		}
	}
	c.m[pid] = procEntry{u, now}
	return u
}

// countFDs counts the entries of a /proc/PID/fd directory, 0 if it cannot
// be read. Linux 6.2 and later give the count as the directory's size,
// which spares reading 100,000 entries of a big leak.
func countFDs(dir string) int {
	f, err := os.Open(dir)
	if err != nil {
		return 0
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 && isProcFS(f) {
		return int(fi.Size())
	}
	n := 0
	for {
		names, err := f.Readdirnames(1024)
		n += len(names)
		if err != nil {
			if err == io.EOF {
				return n
			}
			return 0
		}
	}
}

// isProcFS says whether f is on procfs (a test's fake /proc is not, and
// there a directory's size is no count).
func isProcFS(f *os.File) bool {
	var fs unix.Statfs_t
	return unix.Fstatfs(int(f.Fd()), &fs) == nil && fs.Type == unix.PROC_SUPER_MAGIC
}

// readFDLimit reads the soft "Max open files" limit of a /proc/PID/limits
// file, 0 if unknown or unlimited.
func readFDLimit(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	return parseFDLimit(f)
}

// parseFDLimit finds the soft limit in /proc/PID/limits:
//
//	Limit                     Soft Limit           Hard Limit           Units
//	Max open files            1024                 524288               files
func parseFDLimit(r io.Reader) int {
	const name = "Max open files"
	s := bufio.NewScanner(r)
	for s.Scan() {
		line := s.Bytes()
		if !bytes.HasPrefix(line, []byte(name)) {
			continue
		}
		fields := bytes.Fields(line[len(name):])
		if len(fields) == 0 {
			return 0
		}
		n, err := strconv.Atoi(string(fields[0]))
		if err != nil || n < 0 {
			return 0 // "unlimited"
		}
		return n
	}
	return 0
}
