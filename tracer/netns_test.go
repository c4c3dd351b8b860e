package tracer_test

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/loopback"
)

// netnsSeq names the namespaces of one test binary apart.
var netnsSeq atomic.Uint64

// testNetNS creates a network namespace with its loopback up, kept by a
// bind mount under /run/netns (where ListPeers finds it), and returns its
// inode and a function that runs f on a thread inside it. Its own
// namespace keeps counts exact: no other test's sockets in it.
func testNetNS(t *testing.T) (uint32, func(f func())) {
	t.Helper()
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf("/run/netns/tcptrace-test-%d-%d", os.Getpid(), netnsSeq.Add(1))
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, in the new namespace, exits with the
		// goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		if err := loopback.Up(); err != nil {
			errc <- err
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount the namespace: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(path, unix.MNT_DETACH) })
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	run := func(f func()) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			runtime.LockOSThread() // never unlocked, as above: the thread exits with the goroutine
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer unix.Close(fd)
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				t.Error(err)
				return
			}
			f()
		}()
		<-done
	}
	return uint32(st.Ino), run
}
