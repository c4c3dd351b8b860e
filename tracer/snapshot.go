package tracer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
)

// ErrNoSnapshot is returned by Snapshot and Rescan when the kernel cannot
// list sockets (no iter/tcp before Linux 5.9), and in trace mode.
var ErrNoSnapshot = errors.New("socket listing unavailable")

// Scan is what a listing of sockets in CLOSE-WAIT found.
type Scan struct {
	// New holds the sockets a listing started tracking, now or in an
	// earlier listing: close_wait events with AgeKnown false, their age
	// counting from first sight. A caller that already tracks one of them
	// from an earlier listing ignores it; sockets the live program tracks
	// are never in New.
	New []events.Event
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
	for _, ns := range networkNamespaces() {
		if err := t.scanIn(ns.path, &scan); err != nil {
			errs = append(errs, fmt.Errorf("list sockets in %s: %w", ns.path, err))
		}
	}
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
	for _, ns := range networkNamespaces() {
		if ns.ino == uint64(netns) {
			return scan, t.scanIn(ns.path, &scan)
		}
	}
	return scan, fmt.Errorf("network namespace %d not found", netns)
}

func (t *Tracer) scanIn(path string, scan *Scan) error {
	data, err := t.readSnapshotIn(path)
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
		if flags := data[offFlags]; flags&flagKnown == 0 || flags&flagAgeUnknown != 0 {
			scan.New = append(scan.New, ev)
		}
	}
	return nil
}

// readSnapshotIn runs the iterator in the network namespace at path: a tcp
// iterator lists the sockets of the namespace of the task that opens it.
func (t *Tracer) readSnapshotIn(path string) ([]byte, error) {
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
			ns, err := os.Open(path)
			if err != nil {
				return nil, err
			}
			defer ns.Close()
			if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
				return nil, fmt.Errorf("setns: %w", err)
			}
			rc, err := t.snapshotIter.Open()
			if err != nil {
				return nil, fmt.Errorf("open iterator: %w", err)
			}
			defer rc.Close()
			return io.ReadAll(rc)
		}()
		done <- result{data, err}
	}()
	r := <-done
	return r.data, r.err
}

type namespace struct {
	path string
	ino  uint64
}

// networkNamespaces returns one path for each network namespace in use:
// those of running processes and those kept by `ip netns` bind mounts.
func networkNamespaces() []namespace {
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
		if unix.Stat(p, &st) != nil || seen[st.Ino] {
			continue // gone, or a namespace already listed
		}
		seen[st.Ino] = true
		found = append(found, namespace{p, st.Ino})
	}
	return found
}
