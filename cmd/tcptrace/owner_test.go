package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/testenv"
)

// leakFrom starts a helper that leaks the server side of one connection,
// then connects to it and returns the helper, its port and the client.
func leakFrom(t *testing.T, role string) (*helper, string, net.Conn, int) {
	t.Helper()
	testenv.RequirePrivileged(t)
	h := startHelper(t, role, 0)
	port := h.line(t)
	cl, err := net.Dial("tcp4", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	var other int
	if _, err := fmt.Sscanf(h.line(t), "child %d", &other); err != nil {
		t.Fatalf("helper output: %v", err)
	}
	return h, port, cl, other
}

func checkOwners(t *testing.T, ev jsonEvent, want ...int) {
	t.Helper()
	slices.Sort(want)
	if ev.OwnerSource != "proc" || !slices.Equal(ev.ownerPIDs(), want) {
		t.Fatalf("%s owner = %v (source %s), want pids %v; test pid %d", ev.Event, ev.ownerPIDs(), ev.OwnerSource, want, os.Getpid())
	}
	if ev.SocketInode == 0 {
		t.Errorf("%s without socket_inode", ev.Event)
	}
}

// The leaking server is another process than the client and than the task
// the kernel ran the FIN in: the owner is the server.
func TestOwnerIsTheLeakingProcess(t *testing.T) {
	h, port, cl, _ := leakFrom(t, "leak")
	p := startTracer(t, "closewait", "--all", "--port", port, "--threshold", "300ms")
	cl.Close()
	isServer := func(ev jsonEvent) bool { return strconv.Itoa(ev.LocalPort) == port }
	cw := p.next(eventTimeout, "close_wait", func(ev jsonEvent) bool { return ev.Event == "close_wait" && isServer(ev) })
	// Entering CLOSE-WAIT, owners come from earlier scans only: none yet.
	if cw.OwnerSource != "unresolved" || len(cw.Owner) != 0 || cw.SocketInode == 0 {
		t.Errorf("close_wait owner %v (%s) inode %d, want unresolved before any scan, with the inode", cw.ownerPIDs(), cw.OwnerSource, cw.SocketInode)
	}
	stuck := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && ev.Sock == cw.Sock })
	checkOwners(t, stuck, h.cmd.Process.Pid)
	o := stuck.Owner[0]
	exe, _ := os.Executable()
	if o.Exe != exe || o.Comm != filepath.Base(exe)[:min(15, len(filepath.Base(exe)))] ||
		!strings.Contains(o.Cmdline, os.Args[0]) || o.UID != os.Getuid() || o.FD < 3 {
		t.Errorf("owner details %+v; want exe %s, its comm, uid %d, an fd >= 3", o, exe, os.Getuid())
	}
	if stuck.SocketInode != cw.SocketInode {
		t.Errorf("socket_inode %d on stuck, %d on close_wait", stuck.SocketInode, cw.SocketInode)
	}
	// The close reports the holders last seen, and who closed.
	_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
	ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Event == "app_close" && ev.Sock == cw.Sock })
	if ac.OwnerSource != "last_seen" || !slices.Equal(ac.ownerPIDs(), []int{h.cmd.Process.Pid}) {
		t.Errorf("app_close owner %v (%s), want last_seen %d", ac.ownerPIDs(), ac.OwnerSource, h.cmd.Process.Pid)
	}
}

// The peer closes while the connection still waits in the accept queue: no
// file refers to the socket yet. The server accepts it later and leaks it:
// the stuck report finds the socket's inode and its owner.
func TestOwnerOfSocketAcceptedAfterFIN(t *testing.T) {
	testenv.RequirePrivileged(t)
	h := startHelper(t, "leak-late", 0)
	port := h.line(t)
	p := startTracer(t, "closewait", "--all", "--port", port, "--threshold", "500ms")
	cl, err := net.Dial("tcp4", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	isServer := func(ev jsonEvent) bool { return strconv.Itoa(ev.LocalPort) == port }
	cw := p.next(eventTimeout, "close_wait", func(ev jsonEvent) bool { return ev.Event == "close_wait" && isServer(ev) })
	if cw.SocketInode != 0 || cw.OwnerSource != "no_file" {
		t.Errorf("close_wait in the accept queue: inode %d owner_source %s, want 0 and no_file", cw.SocketInode, cw.OwnerSource)
	}
	fmt.Fprintln(h.stdin) // accept now
	if l := h.line(t); l != "child 0" {
		t.Fatalf("helper said %q", l)
	}
	stuck := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && ev.Sock == cw.Sock })
	checkOwners(t, stuck, h.cmd.Process.Pid)
}

// A socket already in CLOSE-WAIT when tcptrace starts is found, with its
// owner and an unknown age, reported stuck, and its close is seen.
func TestSnapshotOfExistingCloseWait(t *testing.T) {
	h, port, cl, _ := leakFrom(t, "leak")
	cl.Close() // CLOSE-WAIT now, before the tracer runs: on loopback the FIN is handled within the close
	p := startTracer(t, "closewait", "--all", "--port", port, "--threshold", "300ms")
	isServer := func(ev jsonEvent) bool { return strconv.Itoa(ev.LocalPort) == port }
	cw := p.next(eventTimeout, "snapshot close_wait", func(ev jsonEvent) bool { return ev.Event == "close_wait" && isServer(ev) })
	if *cw.AgeKnown {
		t.Errorf("close_wait of a socket found at start-up says age_known: %v", cw)
	}
	checkOwners(t, cw, h.cmd.Process.Pid)
	stuck := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && ev.Sock == cw.Sock })
	if *stuck.AgeKnown || *stuck.AgeNS < int64(300*time.Millisecond) {
		t.Errorf("stuck age_ns=%d age_known=%v, want >= 300ms counted from first sight, unknown", *stuck.AgeNS, *stuck.AgeKnown)
	}
	checkOwners(t, stuck, h.cmd.Process.Pid)
	// The owner dies: the kernel closes the socket in its exit path.
	_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
	ac := p.next(eventTimeout, "app_close", func(ev jsonEvent) bool { return ev.Sock == cw.Sock && ev.Event != "stuck" })
	if ac.Event != "app_close" || *ac.AgeKnown || !*ac.WasStuck || ac.FinToCloseNS != nil {
		t.Errorf("close of a snapshot socket: %v; want app_close, age unknown, was_stuck", ac)
	}
	if ac.Closer == nil || ac.Closer.PID != h.cmd.Process.Pid || ac.OwnerSource != "last_seen" ||
		!slices.Equal(ac.ownerPIDs(), []int{h.cmd.Process.Pid}) {
		t.Errorf("app_close closer %+v owner %v (%s), want the killed helper %d", ac.Closer, ac.ownerPIDs(), ac.OwnerSource, h.cmd.Process.Pid)
	}
}

// startNetnsLeak starts a helper in a new network namespace holding both
// ends of a connection; it closes the client end when told. It returns the
// helper, the server port and the namespace's inode.
func startNetnsLeak(t *testing.T) (*helper, string, uint64) {
	t.Helper()
	testenv.RequirePrivileged(t)
	h := startHelper(t, "netns-leak", syscall.CLONE_NEWNET)
	port := h.line(t)
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", h.cmd.Process.Pid), &st); err != nil {
		t.Fatal(err)
	}
	if st.Ino == ownNetNS(t) {
		t.Fatal("helper shares the test's network namespace")
	}
	return h, port, st.Ino
}

// A leak inside another network namespace is reported with that
// namespace's inode and its owner.
func TestLeakInOtherNetworkNamespace(t *testing.T) {
	h, port, netns := startNetnsLeak(t)
	p := startTracer(t, "closewait", "--all", "--port", port, "--threshold", "300ms")
	fmt.Fprintln(h.stdin)
	h.line(t) // closed
	isServer := func(ev jsonEvent) bool { return strconv.Itoa(ev.LocalPort) == port && ev.NetNS == netns }
	cw := p.next(eventTimeout, "close_wait in the namespace", func(ev jsonEvent) bool { return ev.Event == "close_wait" && isServer(ev) })
	stuck := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && ev.Sock == cw.Sock })
	checkOwners(t, stuck, h.cmd.Process.Pid)
}

// Every socket in CLOSE-WAIT at start-up is found, however many: the
// listing spans several seq_file buffers, and the kernel runs the iterator
// program again for the socket at each buffer's end.
func TestSnapshotFindsEverySocket(t *testing.T) {
	testenv.RequirePrivileged(t)
	const n = 1000
	ln := listen(t, "tcp4", "127.0.0.1:0")
	for range n {
		dial(t, ln).client.Close()
	}
	p := startTracer(t, "closewait", "--all", "--port", portArg(ln), "--threshold", "1m")
	found := map[string]bool{}
	for len(found) < n {
		ev := p.next(eventTimeout, "snapshot close_wait", func(ev jsonEvent) bool { return ev.Event == "close_wait" })
		if *ev.AgeKnown || ev.LocalPort != listenerPort(ln) || found[ev.Sock] {
			t.Fatalf("after %d: unexpected %v", len(found), ev)
		}
		found[ev.Sock] = true
	}
	for _, ev := range p.drain() {
		if ev.Event == "close_wait" && !found[ev.Sock] {
			t.Errorf("more than %d sockets reported: %v", n, ev)
		}
	}
	if !strings.Contains(p.stderr.String(), fmt.Sprintf("close_wait_sockets=%d", n)) {
		t.Errorf("start-up snapshot log does not say %d sockets:\n%s", n, p.stderr.String())
	}
}

// A leak in another network namespace that predates tcptrace is found by
// the start-up snapshot, which lists each namespace's sockets from inside.
func TestSnapshotInOtherNetworkNamespace(t *testing.T) {
	h, port, netns := startNetnsLeak(t)
	fmt.Fprintln(h.stdin)
	h.line(t) // closed: in CLOSE-WAIT before the tracer starts
	p := startTracer(t, "closewait", "--all", "--port", port, "--threshold", "300ms")
	cw := p.next(eventTimeout, "snapshot close_wait in the namespace", func(ev jsonEvent) bool {
		return ev.Event == "close_wait" && strconv.Itoa(ev.LocalPort) == port && ev.NetNS == netns
	})
	if *cw.AgeKnown {
		t.Errorf("snapshot socket says age_known: %v", cw)
	}
	checkOwners(t, cw, h.cmd.Process.Pid)
	stuck := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && ev.Sock == cw.Sock })
	checkOwners(t, stuck, h.cmd.Process.Pid)
}

// The descriptor is handed over with SCM_RIGHTS and the sender closes its
// copy: the owner is the receiver alone.
func TestOwnerAfterSCMRights(t *testing.T) {
	_, port, cl, receiver := leakFrom(t, "leak-pass")
	p := startTracer(t, "closewait", "--all", "--port", port, "--threshold", "300ms")
	cl.Close()
	stuck := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && strconv.Itoa(ev.LocalPort) == port })
	checkOwners(t, stuck, receiver)
}

// After fork both processes hold the descriptor: both are listed.
func TestOwnersSharedAfterFork(t *testing.T) {
	h, port, cl, child := leakFrom(t, "leak-fork")
	p := startTracer(t, "closewait", "--all", "--port", port, "--threshold", "300ms")
	cl.Close()
	stuck := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && strconv.Itoa(ev.LocalPort) == port })
	checkOwners(t, stuck, h.cmd.Process.Pid, child)
}

// A leaking server in a container's cgroup: every event carries the cgroup
// id and the container id its cgroup path names. The cgroup is a real
// cgroup v2 directory named as Docker's systemd driver names them.
func TestContainerContext(t *testing.T) {
	testenv.RequirePrivileged(t)
	root := "/sys/fs/cgroup"
	if !isCgroup2(root) {
		root = "/sys/fs/cgroup/unified"
	}
	if !isCgroup2(root) {
		t.Skip("no cgroup v2 hierarchy to create a container cgroup in")
	}
	idBytes := make([]byte, 32)
	_, _ = rand.Read(idBytes)
	id := hex.EncodeToString(idBytes)
	dir := filepath.Join(root, "tcptrace-test.slice", "docker-"+id+".scope")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup: %v", err)
	}
	t.Cleanup(func() {
		os.Remove(dir)
		os.Remove(filepath.Dir(dir))
	})
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(cg.Fd()), &st); err != nil {
		t.Fatal(err)
	}

	cmd := helperCommand("leak")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start a process in the cgroup (needs clone3 CLONE_INTO_CGROUP): %v", err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	h := &helper{cmd: cmd, lines: bufio.NewScanner(stdout)}
	port := h.line(t)
	p := startTracer(t, "closewait", "--all", "--port", port, "--threshold", "300ms")
	cl, err := net.Dial("tcp4", "127.0.0.1:"+port)
	if err != nil {
		t.Fatal(err)
	}
	h.line(t) // accepted
	cl.Close()
	cw := p.next(eventTimeout, "close_wait", func(ev jsonEvent) bool { return ev.Event == "close_wait" && strconv.Itoa(ev.LocalPort) == port })
	if cw.CgroupID != st.Ino || cw.ContainerID != id {
		t.Errorf("close_wait cgroup_id=%d container_id=%q, want %d and %s", cw.CgroupID, cw.ContainerID, st.Ino, id)
	}
	stuck := p.next(eventTimeout, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && ev.Sock == cw.Sock })
	if stuck.ContainerID != id {
		t.Errorf("stuck container_id=%q, want %s", stuck.ContainerID, id)
	}
	checkOwners(t, stuck, cmd.Process.Pid)
}

func isCgroup2(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC
}
