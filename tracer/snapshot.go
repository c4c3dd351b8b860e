package tracer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
)

// ErrNoSnapshot is returned by Snapshot and Rescan when the kernel cannot
// list sockets (no iter/tcp before Linux 5.9), and in trace mode.
var ErrNoSnapshot = errors.New("socket listing unavailable")

// Scan is what a listing of sockets in CLOSE-WAIT found.
type Scan struct {
	// New holds the sockets this listing started tracking: close_wait
	// events with AgeKnown false, their age counting from now. Sockets the
	// live program or an earlier listing tracks are not in it.
	New []events.Event
	// Untracked counts sockets in CLOSE-WAIT the kernel table had no room
	// for.
	Untracked int
	// Inodes holds the current socket inode of every socket in CLOSE-WAIT
	// found, tracked before or not, by sock id; 0 while none has a file.
	Inodes map[uint64]uint64
}

// Snapshot lists the sockets in CLOSE-WAIT in every network namespace of
// the node, so that those that predate tcptrace are reported and their exit
// seen like any other's. Namespaces that cannot be entered are reported in
// the error; the sockets of the others are returned all the same.
func (t *Tracer) Snapshot() (Scan, error) {
	scan := Scan{Inodes: make(map[uint64]uint64)}
	if t.snapshotIter == nil {
		return scan, ErrNoSnapshot
	}
	var errs []error
	namespaces := openNetworkNamespaces(0)
	for _, ns := range namespaces {
		if err := t.scanIn(ns, &scan); err != nil {
			errs = append(errs, fmt.Errorf("list sockets in %s: %w", ns.file.Name(), err))
		}
		ns.file.Close()
	}
	// Counted once here: later listings find the same sockets again.
	t.snapshotUntracked.Add(uint64(scan.Untracked))
	return scan, oneline.Join(errs...)
}

// Rescan lists the sockets in CLOSE-WAIT in one network namespace, given by
// its inode: for the current inode of a socket that had no file when it
// entered CLOSE-WAIT.
func (t *Tracer) Rescan(netns uint32) (Scan, error) {
	scan := Scan{Inodes: make(map[uint64]uint64)}
	if t.snapshotIter == nil {
		return scan, ErrNoSnapshot
	}
	found := openNetworkNamespaces(uint64(netns))
	if len(found) == 0 {
		return scan, fmt.Errorf("network namespace %d not found", netns)
	}
	defer found[0].file.Close()
	return scan, t.scanIn(found[0], &scan)
}

func (t *Tracer) scanIn(ns namespace, scan *Scan) error {
	start := bootclock.Now()
	data, err := t.readSnapshotIn(ns)
	if err != nil {
		return err
	}
	for ; len(data) >= eventSize; data = data[eventSize:] {
		var ev events.Event
		if err := t.dec.decode(data[:eventSize], &ev); err != nil {
			t.decodeErrs.Add(1)
			continue
		}
		if _, dup := scan.Inodes[ev.Sock]; dup {
			continue
		}
		scan.Inodes[ev.Sock] = ev.Inode
		flags := data[offFlags]
		switch {
		case flags&flagKnown != 0 && flags&flagTracked == 0:
			// Seen entering CLOSE-WAIT live, with no room to track it.
		case flags&flagTracked == 0:
			scan.Untracked++
			scan.New = append(scan.New, ev)
		case flags&flagKnown == 0:
			scan.New = append(scan.New, ev)
		case flags&flagAgeUnknown != 0 && ev.FinBootNS >= start:
			// Tracked by this very listing: the kernel ran the program
			// again for this socket after a full seq_file buffer.
			scan.New = append(scan.New, ev)
		}
	}
	return nil
}

// readSnapshotIn runs the iterator in the network namespace ns: a tcp
// iterator lists the sockets of the namespace of the task that opens it.
// Entering another namespace needs CAP_SYS_ADMIN; our own needs nothing.
func (t *Tracer) readSnapshotIn(ns namespace) ([]byte, error) {
	if ns.ino == ownNetNS() {
		return t.readIterator()
	}
	type result struct {
		data []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		// The thread is never unlocked: it exits with this goroutine rather
		// than serve other goroutines from another network namespace.
		runtime.LockOSThread()
		data, err := func() ([]byte, error) {
			if err := unix.Setns(int(ns.file.Fd()), unix.CLONE_NEWNET); err != nil {
				return nil, fmt.Errorf("setns: %w", err)
			}
			return t.readIterator()
		}()
		done <- result{data, err}
	}()
	r := <-done
	return r.data, r.err
}

type namespace struct {
	file *os.File
	ino  uint64
}

func (t *Tracer) readIterator() ([]byte, error) {
	rc, err := t.snapshotIter.Open()
	if err != nil {
		return nil, fmt.Errorf("open iterator: %w", err)
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// ownNetNS is the inode of this process's network namespace, 0 if unknown.
func ownNetNS() uint64 {
	var st unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/net", &st) != nil {
		return 0
	}
	return st.Ino
}

// openNetworkNamespaces opens each network namespace in use once: those of
// running processes and those kept by `ip netns` bind mounts. Holding them
// open keeps a namespace listable when the process it was found through
// exits. With only nonzero, just that namespace is opened. The caller
// closes the files.
func openNetworkNamespaces(only uint64) []namespace {
	candidates := []string{"/proc/self/ns/net"}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	candidates = append(candidates, procs...)
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		named, _ := filepath.Glob(filepath.Join(dir, "*"))
		candidates = append(candidates, named...)
	}
	seen := make(map[uint64]bool)
	var found []namespace
	for _, p := range candidates {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil || seen[st.Ino] || (only != 0 && st.Ino != only) {
			continue // gone, already listed, or not the one wanted
		}
		f, err := os.Open(p)
		if err != nil {
			continue // gone meanwhile: another process may lead to it
		}
		var fs unix.Statfs_t
		if unix.Fstatfs(int(f.Fd()), &fs) != nil || fs.Type != unix.NSFS_MAGIC || unix.Fstat(int(f.Fd()), &st) != nil {
			f.Close() // a stale file in /run/netns, not a namespace
			continue
		}
		seen[st.Ino] = true
		found = append(found, namespace{f, st.Ino})
		if only != 0 {
			break
		}
	}
	return found
}
