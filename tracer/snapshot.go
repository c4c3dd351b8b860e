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

// ErrNoSnapshot is returned by Snapshot and Inodes when the kernel cannot
// list sockets (no iter/tcp before Linux 5.9), and in trace mode.
var ErrNoSnapshot = errors.New("socket listing unavailable")

// Snapshot lists the sockets in CLOSE-WAIT in every network namespace of
// the node, so that those that predate tcptrace are reported and their exit
// seen like any other's. It calls found with each socket it starts
// tracking, as a close_wait event with AgeKnown false, its age counting
// from now; ev is reused after found returns. Sockets are handed over as
// they are read, never all held at once: a leak can mean 100,000 of them.
// Namespaces that cannot be entered are reported in the error; the sockets
// of the others are passed all the same.
func (t *Tracer) Snapshot(found func(ev *events.Event)) error {
	if t.snapshotIter == nil {
		return ErrNoSnapshot
	}
	var errs []error
	seen := make(map[uint64]struct{})
	var keys map[uint64]struct{} // table keys seen, to prune an adopted table
	listed := make(map[uint32]bool)
	if t.adoptPending {
		keys = make(map[uint64]struct{})
	}
	for _, ns := range openNetworkNamespaces(0) {
		err := t.listIn(ns, func(ev *events.Event, isNew, untracked bool) {
			if keys != nil {
				keys[ev.Key] = struct{}{}
			}
			if _, dup := seen[ev.Sock]; dup {
				return
			}
			seen[ev.Sock] = struct{}{}
			if untracked {
				// Counted here only: later listings find it again.
				t.snapshotUntracked.Add(1)
			}
			if isNew {
				found(ev)
			}
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("list sockets in %s: %w", ns.file.Name(), err))
		} else {
			listed[uint32(ns.ino)] = true
		}
		ns.file.Close()
	}
	if t.adoptPending {
		t.adoptPending = false
		kept, pruned, err := t.pruneAdopted(keys, listed)
		if err != nil {
			errs = append(errs, fmt.Errorf("prune the pinned table: %w", err))
		}
		t.cfg.Logger.Info("adopted the pinned CLOSE-WAIT table", "pin", filepath.Join(t.pinDir, pinnedTable),
			"still_in_close_wait", kept, "closed_meanwhile", pruned)
	}
	return oneline.Join(errs...)
}

// Inodes lists the sockets in CLOSE-WAIT in one network namespace, given
// by its inode, and returns the current inode of each (0 while none has a
// file), by sock id: for a socket that had no file when it entered
// CLOSE-WAIT. Sockets the listing finds untracked are tracked in the kernel
// table from then on, so the table scan finds them.
func (t *Tracer) Inodes(netns uint32) (map[uint64]uint64, error) {
	inodes := make(map[uint64]uint64)
	if t.snapshotIter == nil {
		return inodes, ErrNoSnapshot
	}
	found := openNetworkNamespaces(uint64(netns))
	if len(found) == 0 {
		return inodes, fmt.Errorf("network namespace %d not found", netns)
	}
	defer found[0].file.Close()
	err := t.listIn(found[0], func(ev *events.Event, _, _ bool) {
		if _, dup := inodes[ev.Sock]; !dup {
			inodes[ev.Sock] = ev.Inode
		}
	})
	return inodes, err
}

// listIn runs the listing program in network namespace ns and calls visit
// with each socket in CLOSE-WAIT: isNew when this listing started tracking
// it, untracked when the kernel table had no room for it. A socket can come
// twice: the kernel runs the program again for a socket whose record did
// not fit in a full seq_file buffer.
func (t *Tracer) listIn(ns namespace, visit func(ev *events.Event, isNew, untracked bool)) error {
	start := bootclock.Now()
	var ev events.Event
	return t.readIteratorIn(ns, func(data []byte) {
		for ; len(data) >= eventSize; data = data[eventSize:] {
			if err := t.dec.decode(data[:eventSize], &ev); err != nil {
				t.decodeErrs.Add(1)
				continue
			}
			flags := data[offFlags]
			var isNew, untracked bool
			switch {
			case flags&flagKnown != 0 && flags&flagTracked == 0:
				// Seen entering CLOSE-WAIT live, with no room to track it.
			case flags&flagTracked == 0:
				isNew, untracked = true, true
			case flags&flagKnown == 0:
				isNew = true
			case flags&flagAgeUnknown != 0 && ev.FinBootNS >= start:
				// Tracked by this very listing: the kernel ran the program
				// again for this socket after a full seq_file buffer.
				isNew = true
			}
			visit(&ev, isNew, untracked)
		}
	})
}

// readIteratorIn runs the iterator in the network namespace ns, passing its
// output to records a whole number of records at a time: a tcp iterator
// lists the sockets of the namespace of the task that opens it. Entering
// another namespace needs CAP_SYS_ADMIN; our own needs nothing. records
// always runs on the caller's goroutine, never on the thread that entered
// another namespace.
func (t *Tracer) readIteratorIn(ns namespace, records func([]byte)) error {
	if ns.ino == ownNetNS() {
		return t.readIterator(records)
	}
	chunks := make(chan []byte)
	taken := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it exits with this goroutine rather
		// than serve other goroutines from another network namespace.
		runtime.LockOSThread()
		defer close(chunks)
		if err := unix.Setns(int(ns.file.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns: %w", err)
			return
		}
		done <- t.readIterator(func(b []byte) {
			chunks <- b
			<-taken // b is reused once records is done with it
		})
	}()
	for b := range chunks {
		records(b)
		taken <- struct{}{}
	}
	return <-done
}

// readIterator reads the iterator's output in bounded chunks.
func (t *Tracer) readIterator(records func([]byte)) error {
	rc, err := t.snapshotIter.Open()
	if err != nil {
		return fmt.Errorf("open iterator: %w", err)
	}
	defer rc.Close()
	buf := make([]byte, 256*eventSize)
	n := 0
	for {
		m, err := rc.Read(buf[n:])
		n += m
		if whole := n - n%eventSize; whole > 0 {
			records(buf[:whole])
			n = copy(buf, buf[whole:n])
		}
		switch {
		case err == io.EOF:
			if n != 0 {
				t.decodeErrs.Add(1) // a partial record: counted, as any undecodable one
			}
			return nil
		case err != nil:
			return fmt.Errorf("read iterator: %w", err)
		}
	}
}

type namespace struct {
	file *os.File
	ino  uint64
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
	candidates := networkNamespaceCandidates()
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

// networkNamespaceCandidates lists the paths that open the network
// namespaces in use: ours, those of running processes, and those kept by
// `ip netns` bind mounts. Several paths may open the same namespace.
func networkNamespaceCandidates() []string {
	candidates := []string{"/proc/self/ns/net"}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	candidates = append(candidates, procs...)
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		named, _ := filepath.Glob(filepath.Join(dir, "*"))
		candidates = append(candidates, named...)
	}
	return candidates
}
