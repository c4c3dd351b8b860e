package tracer

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
)

// ErrNoSnapshot is returned by Snapshot when the kernel cannot list sockets
// (no iter/tcp before Linux 5.9) or in trace mode.
var ErrNoSnapshot = errors.New("start-up snapshot unavailable")

// Snapshot lists the sockets already in CLOSE-WAIT in every network
// namespace of the node and starts tracking them in the kernel, so that
// their exit is reported like that of any other socket. The events are
// close_wait events with AgeKnown false: their age counts from now.
// Namespaces that cannot be entered are reported in the error; the
// sockets of the others are returned all the same.
func (t *Tracer) Snapshot() ([]events.Event, error) {
	if t.snapshotIter == nil {
		return nil, ErrNoSnapshot
	}
	var out []events.Event
	var errs []error
	for _, path := range networkNamespaces() {
		data, err := t.readSnapshotIn(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("snapshot of %s: %w", path, err))
			continue
		}
		for len(data) >= eventSize {
			var ev events.Event
			if err := t.dec.decode(data[:eventSize], &ev); err != nil {
				t.decodeErrs.Add(1)
			} else {
				out = append(out, ev)
			}
			data = data[eventSize:]
		}
	}
	return out, oneline.Join(errs...)
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

// networkNamespaces returns one path for each network namespace in use:
// those of running processes and those kept by `ip netns` bind mounts.
func networkNamespaces() []string {
	candidates := []string{"/proc/self/ns/net"}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	candidates = append(candidates, procs...)
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		named, _ := filepath.Glob(filepath.Join(dir, "*"))
		candidates = append(candidates, named...)
	}
	seen := make(map[uint64]bool)
	var paths []string
	for _, p := range candidates {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil || seen[st.Ino] {
			continue // gone, or a namespace already listed
		}
		seen[st.Ino] = true
		paths = append(paths, p)
	}
	if len(paths) > 1 {
		sort.Strings(paths[1:]) // our own first, the rest in a stable order
	}
	return paths
}
