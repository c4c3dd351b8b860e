package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxDirs bounds one walk of the hierarchy, so a host with a runaway number
// of cgroups costs bounded time and memory. Directories past the bound are
// not mapped and their ids do not resolve.
const MaxDirs = 100_000

// Resolver maps cgroup v2 ids to paths. On cgroup v2 a cgroup's id, which
// the eBPF side reads as kn->id, is the inode number of its directory in the
// unified hierarchy (on 64-bit kernels since 5.5; tcptrace needs 5.8), so a
// walk of the hierarchy that stats every directory builds the map.
//
// Each scan replaces the map: ids are not reused within a boot, but a
// removed cgroup's id stops resolving at the next rescan. A Resolver is safe
// for concurrent use.
type Resolver struct {
	root      string
	minRescan time.Duration
	now       func() time.Time // tests replace it

	mu    sync.RWMutex
	paths map[uint64]string

	scanMu   sync.Mutex // serialises scans; guards the fields below
	lastScan time.Time
	scans    int
}

// NewResolver returns a Resolver for the hierarchy mounted at root (see
// UnifiedRoot). It scans lazily, on the first lookup; a miss rescans unless
// the last scan is younger than minRescan, which bounds the cost of ids
// that never resolve (a cgroup already removed, or outside root).
func NewResolver(root string, minRescan time.Duration) *Resolver {
	return &Resolver{root: root, minRescan: minRescan, now: time.Now}
}

// Path returns the path of cgroup id relative to the root, starting with
// "/"; the root itself is "/".
func (r *Resolver) Path(id uint64) (string, bool) {
	if p, ok := r.lookup(id); ok {
		return p, true
	}
	r.scanMu.Lock()
	defer r.scanMu.Unlock()
	// Another caller may have rescanned while this one waited.
	if p, ok := r.lookup(id); ok {
		return p, true
	}
	if r.scans > 0 && r.now().Sub(r.lastScan) < r.minRescan {
		return "", false
	}
	if r.scanLocked() != nil {
		return "", false
	}
	return r.lookup(id)
}

// Scan rescans now, whatever the time of the last scan, and reports whether
// the root could be read: Path has no way to say so.
func (r *Resolver) Scan() error {
	r.scanMu.Lock()
	defer r.scanMu.Unlock()
	return r.scanLocked()
}

func (r *Resolver) lookup(id uint64) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, ok := r.paths[id]
	return p, ok
}

func (r *Resolver) scanLocked() error {
	// A failed scan counts too, so a missing root is not retried on every
	// miss.
	r.lastScan = r.now()
	r.scans++
	m, err := walk(r.root, MaxDirs)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.paths = m
	r.mu.Unlock()
	return nil
}

// walk maps the inode number of every directory under root, root included,
// to its path relative to root, stopping after limit directories.
// Directories that vanish or cannot be read mid-walk are skipped: cgroups
// come and go all the time. Only an unreadable root is an error.
func walk(root string, limit int) (map[uint64]string, error) {
	type dir struct{ abs, rel string }
	m := make(map[uint64]string)
	stack := []dir{{root, "/"}}
	for visited := 0; len(stack) > 0 && visited < limit; {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		ino, subdirs, err := readDir(d.abs)
		if err != nil {
			if d.rel == "/" {
				return nil, fmt.Errorf("cgroup root: %w", err)
			}
			continue
		}
		visited++
		m[ino] = d.rel
		for _, name := range subdirs {
			rel := d.rel + name
			if d.rel != "/" {
				rel = d.rel + "/" + name
			}
			stack = append(stack, dir{d.abs + "/" + name, rel})
		}
	}
	return m, nil
}

// readDir returns a directory's inode number and the names of its
// subdirectories. Symlinks are not followed.
func readDir(path string) (uint64, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	// fstat of the open directory, not a second lookup by name that could
	// meet a different directory.
	fi, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	if !fi.IsDir() {
		return 0, nil, fmt.Errorf("%s: not a directory", path)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, nil, fmt.Errorf("%s: no inode number", path)
	}
	entries, err := f.ReadDir(-1)
	if err != nil && len(entries) == 0 {
		return 0, nil, err
	}
	var subdirs []string
	for _, e := range entries {
		if e.IsDir() {
			subdirs = append(subdirs, e.Name())
		}
	}
	return uint64(st.Ino), subdirs, nil
}

// UnifiedRoot finds the mounted cgroup v2 hierarchy: /sys/fs/cgroup on a
// unified host, /sys/fs/cgroup/unified on a hybrid one, otherwise the first
// cgroup2 mount in /proc/self/mountinfo (preferring one of the hierarchy's
// root over a bind mount of a subtree).
func UnifiedRoot() (string, error) {
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var fs unix.Statfs_t
		if unix.Statfs(p, &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC {
			return p, nil
		}
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	if p, ok := cgroup2Mount(data); ok {
		return p, nil
	}
	return "", errors.New("no cgroup2 hierarchy mounted")
}

// cgroup2Mount returns the mount point of a cgroup2 mount in mountinfo
// content: "id parent major:minor root mountpoint options [optional...] -
// fstype source superoptions".
func cgroup2Mount(data []byte) (string, bool) {
	found, foundRoot := "", false
	for _, line := range bytes.Split(data, []byte("\n")) {
		fields := strings.Fields(string(line))
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		// The kernel writes absolute mount points; anything else is not a
		// mountinfo line.
		if sep < 0 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" || !strings.HasPrefix(fields[4], "/") {
			continue
		}
		root := fields[3] == "/"
		if found == "" || root && !foundRoot {
			found, foundRoot = unescapeMount(fields[4]), root
		}
	}
	return found, found != ""
}

// unescapeMount undoes the kernel's octal escapes of space, tab, newline and
// backslash in mountinfo paths.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }
