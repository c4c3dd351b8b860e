package main

// The fault table's tests (docs/reliability.md): each puts tcptrace in
// front of one fault, for real where the machine allows it, and checks
// what it does. The helper processes they need run as the "faults" role
// (faultsHelper), with a sub-role as their first argument.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/loopback"
	"github.com/tcptrace/tcptrace/internal/schemacheck"
	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/tracer"
)

// faultsHelper runs the "faults" helper role: os.Args[1] is the sub-role.
//
//	mountns SETUP[,SETUP...] PROG [ARGS...]  in a private mount namespace
//	        set up as asked (see faultMounts), exec PROG ("tcptrace": this
//	        binary as tcptrace)
//	memlock BYTES PROG [ARGS...]  with RLIMIT_MEMLOCK at BYTES, exec PROG
//	memlock-probe  print "charged" when the kernel charges eBPF maps to
//	        RLIMIT_MEMLOCK (before 5.11), "memcg" otherwise
//	self-leak [PORT]  leak the server side of a connection to itself on
//	        PORT (default any: print "leak PORT CLIENTPORT"), then obey
//	        stdin: "probe" prints the server socket's state (eof: still in
//	        CLOSE-WAIT; or the error of a write, ECONNABORTED once destroyed)
//	pidns   PID 1 of a pid namespace: see pidnsInit
func faultsHelper(fail func(error)) {
	if len(os.Args) < 2 {
		fail(errors.New("faults: no sub-role"))
	}
	sub, args := os.Args[1], os.Args[2:]
	switch sub {
	case "mountns":
		if len(args) < 2 {
			fail(errors.New("mountns: want SETUP PROG [ARGS...]"))
		}
		// The exec keeps this thread's mount namespace.
		runtime.LockOSThread()
		if err := faultMounts(strings.Split(args[0], ",")); err != nil {
			fail(err)
		}
		fail(faultExec(args[1:]))
	case "memlock":
		n, err := strconv.ParseUint(args[0], 10, 64)
		if err != nil {
			fail(err)
		}
		lim := unix.Rlimit{Cur: n, Max: n}
		if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
			fail(err)
		}
		fail(faultExec(args[1:]))
	case "memlock-probe":
		lim := unix.Rlimit{Cur: 0, Max: 0}
		if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
			fail(err)
		}
		// The smallest map: with RLIMIT_MEMLOCK 0 only a kernel that
		// charges memory to the memory cgroup creates it.
		attr := struct{ typ, keySize, valueSize, maxEntries uint32 }{unix.BPF_MAP_TYPE_ARRAY, 4, 4, 1}
		fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_MAP_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		switch {
		case errno == 0:
			unix.Close(int(fd))
			fmt.Println("memcg")
		case errno == unix.EPERM:
			fmt.Println("charged")
		default:
			fail(fmt.Errorf("create a map: %w", errno))
		}
		os.Exit(0)
	case "self-leak":
		selfLeak(fail, args)
	case "pidns":
		pidnsInit(fail)
	}
	fail(fmt.Errorf("faults: unknown sub-role %q", sub))
}

// faultExec replaces the process with args: "tcptrace" is this binary as
// tcptrace; any other program gets this binary's path for "@tcptrace" in
// its arguments (setpriv ... @tcptrace closewait).
func faultExec(args []string) error {
	env := append(os.Environ(), runMainEnv+"=1")
	if args[0] == "tcptrace" {
		return syscall.Exec(os.Args[0], append([]string{"tcptrace"}, args[1:]...), env)
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		return err
	}
	for i, a := range args {
		if a == "@tcptrace" {
			args[i] = os.Args[0]
		}
	}
	return syscall.Exec(path, args, env)
}

// faultMounts makes this thread's mount namespace private and sets it up:
//
//	no-bpffs    nothing mounted at /sys/fs/bpf (as on a host that never
//	            mounted a bpf filesystem)
//	no-tracefs  neither tracefs nor debugfs mounted
//	cgroup-v1:DIR  no cgroup2 mount anywhere; /sys/fs/cgroup a tmpfs
//	            holding the v1 hierarchy mounted at DIR (outside
//	            /sys/fs/cgroup), bound as /sys/fs/cgroup/BASENAME: a cgroup v1
//	            host's layout
func faultMounts(setups []string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	for _, s := range setups {
		name, arg, _ := strings.Cut(s, ":")
		switch name {
		case "no-bpffs":
			if err := unmountAll("/sys/fs/bpf"); err != nil {
				return err
			}
		case "no-tracefs":
			for _, p := range []string{"/sys/kernel/debug/tracing", "/sys/kernel/tracing", "/sys/kernel/debug"} {
				if err := unmountAll(p); err != nil {
					return err
				}
			}
		case "cgroup-v1":
			for _, p := range cgroup2Mounts() {
				if err := unmountAll(p); err != nil {
					return err
				}
			}
			// Detached with everything mounted below it.
			if err := unmountAll("/sys/fs/cgroup"); err != nil {
				return err
			}
			if err := unix.Mount("tmpfs", "/sys/fs/cgroup", "tmpfs", 0, "mode=755"); err != nil {
				return fmt.Errorf("mount tmpfs on /sys/fs/cgroup: %w", err)
			}
			dir := filepath.Join("/sys/fs/cgroup", filepath.Base(arg))
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			if err := unix.Mount(arg, dir, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("bind the v1 hierarchy %s to %s: %w", arg, dir, err)
			}
			if m := cgroup2Mounts(); len(m) != 0 {
				return fmt.Errorf("cgroup2 still mounted at %v", m)
			}
		default:
			return fmt.Errorf("unknown mount setup %q", s)
		}
	}
	return nil
}

// unmountAll unmounts whatever is mounted at path, mounts stacked there
// included, until nothing is.
func unmountAll(path string) error {
	for {
		err := unix.Unmount(path, unix.MNT_DETACH)
		switch {
		case err == nil:
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more)
		default:
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
}

// cgroup2Mounts lists the mount points of cgroup2 file systems in this
// mount namespace, deepest first.
func cgroup2Mounts() []string {
	data, _ := os.ReadFile("/proc/thread-self/mountinfo")
	var found []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		for i := 6; i+1 < len(f); i++ {
			if f[i] == "-" {
				if f[i+1] == "cgroup2" {
					found = append([]string{f[4]}, found...)
				}
				break
			}
		}
	}
	return found
}

// runFault runs a faults helper to completion: its stdout, stderr and exit
// code.
func runFault(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := helperCommand("faults", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return stdout.String(), stderr.String(), exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), 0
}

// oneErrorLine checks that stderr ends with one "tcptrace: " line that
// says each of want, and no panic.
func oneErrorLine(t *testing.T, what, stderr string, want ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "tcptrace: ") || strings.Contains(stderr, "panic") {
		t.Errorf("%s: stderr %q, want it to end with one tcptrace: line", what, stderr)
		return
	}
	t.Logf("%s: %s", what, last)
	for _, w := range want {
		if !strings.Contains(last, w) {
			t.Errorf("%s: error %q does not say %q", what, last, w)
		}
	}
}

// A kernel without BTF (see pretendUnsupported): every command that loads
// eBPF says what is missing in one line, exit 1. closewait and trace are
// TestUnsupportedKernelFailsClearly's; kill used to fail with the loader's
// words about CO-RE relocations, twice, blaming Linux 5.9.
func TestNoBTFEveryCommand(t *testing.T) {
	testenv.RequirePrivileged(t)
	for _, args := range [][]string{
		{"kill", "--older-than", "0s", "--any-age", "--dry-run"},
		{"top", "--once", "--duration", "1s"},
	} {
		cmd := helperCommand("no-btf", args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 {
			t.Errorf("%v without BTF: %v, want exit 1; stderr %q", args, err, stderr.String())
			continue
		}
		if n := strings.Count(strings.TrimSpace(stderr.String()), "\n"); n != 0 {
			t.Errorf("%v without BTF: %d lines on stderr, want one: %q", args, n+1, stderr.String())
		}
		oneErrorLine(t, strings.Join(args, " "), stderr.String(), "CONFIG_DEBUG_INFO_BTF")
		if stdout.Len() != 0 {
			t.Errorf("%v without BTF wrote to stdout: %q", args, stdout.String())
		}
	}
}

// faultWait polls cond every 10 ms until it holds, failing the test after
// eventTimeout.
func faultWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, eventTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exitOf waits for cmd (started) to exit, within eventTimeout, and returns
// its exit code; a command still running then is killed and fails the
// test.
func exitOf(t *testing.T, cmd *exec.Cmd, stderr fmt.Stringer) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(eventTimeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%v still running after %v; stderr:\n%s", cmd.Args, eventTimeout, stderr)
		return -1
	}
}

// devFull opens /dev/full, where every write fails with ENOSPC, as on a
// full disk.
func devFull(t *testing.T) *os.File {
	t.Helper()
	f, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// stdout fails with ENOSPC (/dev/full): every command ends with exit 1
// and one line saying so; closewait and trace still write their summary,
// counting no event as written; kill, which has destroyed the sockets by
// the time it reports them, says how many it destroyed (it used to stop
// at the first failed line, saying nothing of what it had done).
// TestSummaryCountsLinesWritten fills a small file system instead.
func TestStdoutENOSPC(t *testing.T) {
	testenv.RequirePrivileged(t)
	for _, mode := range [][]string{{"closewait", "--all"}, {"trace"}} {
		ln := listen(t, "tcp4", "127.0.0.1:0")
		cmd := tcptraceCmd(nil, append(mode, "--port", portArg(ln), "--output", "json")...)
		var stderr syncBuffer
		cmd.Stdout, cmd.Stderr = devFull(t), &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		faultWait(t, "tcptrace attached", func() bool { return strings.Contains(stderr.String(), "msg=attached") })
		healthyChurn(t, ln, 5)
		if code := exitOf(t, cmd, &stderr); code != 1 {
			t.Errorf("%v > /dev/full: exit %d, want 1; stderr:\n%s", mode, code, stderr.String())
		}
		oneErrorLine(t, mode[0]+" > /dev/full", stderr.String(), "no space left on device")
		if !strings.Contains(stderr.String(), "msg=stopped events=0 ") {
			t.Errorf("%v > /dev/full: no summary counting 0 events written:\n%s", mode, stderr.String())
		}
	}

	top := tcptraceCmd(nil, "top", "--once", "--duration", "1s", "--output", "json")
	var stderr syncBuffer
	top.Stdout, top.Stderr = devFull(t), &stderr
	if err := top.Start(); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, top, &stderr); code != 1 {
		t.Errorf("top > /dev/full: exit %d, want 1; stderr:\n%s", code, stderr.String())
	}
	oneErrorLine(t, "top > /dev/full", stderr.String(), "no space left on device")

	f := startFixture(t)
	kill := tcptraceCmd(nil, "kill", "--output", "json", "--older-than", "0s", "--any-age",
		"--netns", strconv.FormatUint(f.netns, 10), "--port", strconv.Itoa(f.portA), "--yes")
	stderr = syncBuffer{}
	kill.Stdout, kill.Stderr = devFull(t), &stderr
	if err := kill.Start(); err != nil {
		t.Fatal(err)
	}
	if code := exitOf(t, kill, &stderr); code != 1 {
		t.Errorf("kill > /dev/full: exit %d, want 1; stderr:\n%s", code, stderr.String())
	}
	oneErrorLine(t, "kill > /dev/full", stderr.String(), "no space left on device", "2 destroyed")
	if got := f.probe(t); got["a1"] != "ECONNABORTED" || got["a2"] != "ECONNABORTED" || got["a3"] != "open" || got["b1"] != "eof" {
		t.Errorf("after kill > /dev/full: %v, want a1 and a2 destroyed, the rest as they were", got)
	}
}

// faultTracer is a tcptrace closewait or trace run by a faults helper (in
// a mount namespace of its own), JSON on stdout.
type faultTracer struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	events chan jsonEvent
	done   chan struct{} // stdout read to its end
}

// startFaultTracer runs tcptrace with args in a private mount namespace
// set up as setup says (faultMounts) and waits until it has attached. At
// cleanup it is interrupted and must exit 0.
func startFaultTracer(t *testing.T, setup string, args ...string) *faultTracer {
	t.Helper()
	testenv.RequirePrivileged(t)
	p := &faultTracer{
		cmd:    helperCommand("faults", append([]string{"mountns", setup, "tcptrace"}, append(args, "--output", "json")...)...),
		stderr: &syncBuffer{},
		events: make(chan jsonEvent, 10000),
		done:   make(chan struct{}),
	}
	p.cmd.Stderr = p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		defer close(p.events)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var ev jsonEvent
			if err := schemacheck.Line(t, sc.Text()); err != nil {
				t.Errorf("line fails events/schema.json: %v\n%s", err, sc.Text())
			} else if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("%v: %s", err, sc.Text())
			} else {
				p.events <- ev
			}
		}
	}()
	t.Cleanup(func() { p.stop(t) })
	faultWait(t, "tcptrace attached", func() bool {
		select {
		case <-p.done:
			t.Fatalf("tcptrace exited before attaching; stderr:\n%s", p.stderr.String())
		default:
		}
		return strings.Contains(p.stderr.String(), "msg=attached")
	})
	return p
}

// next returns the next event that matches.
func (p *faultTracer) next(t *testing.T, what string, match func(jsonEvent) bool) jsonEvent {
	t.Helper()
	timeout := time.After(eventTimeout)
	for {
		select {
		case ev, ok := <-p.events:
			if !ok {
				t.Fatalf("output ended while waiting for %s; stderr:\n%s", what, p.stderr.String())
			}
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s within %v; stderr:\n%s", what, eventTimeout, p.stderr.String())
		}
	}
}

// stop interrupts tcptrace: it must exit 0 with its summary. Idempotent.
func (p *faultTracer) stop(t *testing.T) {
	t.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	go func() {
		for range p.events {
		}
	}()
	<-p.done
	if code := exitOf(t, p.cmd, p.stderr); code != 0 || !strings.Contains(p.stderr.String(), "msg=stopped") {
		t.Errorf("tcptrace %v: exit %d after SIGINT, want 0 with its summary; stderr:\n%s", p.cmd.Args, code, p.stderr.String())
	}
}

// leakHere leaks the server side of a loopback connection (the client
// shuts down its side and keeps its socket) and returns it.
func leakHere(t *testing.T, ln *net.TCPListener) conn {
	t.Helper()
	c := dial(t, ln)
	if err := c.client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	return c
}

// No bpf filesystem mounted (/sys/fs/bpf empty, as on this project's
// development VM): --pin-table, which needs one, is refused in one line
// that says how to mount it; without --pin-table closewait, trace, top
// and kill need none.
func TestNoBPFFS(t *testing.T) {
	testenv.RequirePrivileged(t)
	for _, args := range [][]string{
		{"closewait", "--pin-table"},
		{"closewait", "--pin-table", "--pin-dir", "/sys/fs/bpf/elsewhere"},
	} {
		_, stderr, code := runFault(t, append([]string{"mountns", "no-bpffs", "tcptrace"}, args...)...)
		if code != 1 {
			t.Errorf("%v without bpffs: exit %d, want 1; stderr:\n%s", args, code, stderr)
		}
		oneErrorLine(t, strings.Join(args, " "), stderr, "is not on a bpf filesystem", "mount -t bpf bpf /sys/fs/bpf")
	}

	ln := listen(t, "tcp4", "127.0.0.1:0")
	p := startFaultTracer(t, "no-bpffs", "closewait", "--port", portArg(ln), "--threshold", "200ms")
	c := leakHere(t, ln)
	p.next(t, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && c.isServer(ev) })
	p.stop(t)
	for _, args := range [][]string{
		{"trace", "--port", portArg(ln)},
		{"top", "--once", "--duration", "1s", "--port", portArg(ln)},
		{"kill", "--older-than", "0s", "--any-age", "--dry-run", "--port", portArg(ln)},
	} {
		if args[0] == "trace" {
			p := startFaultTracer(t, "no-bpffs", args...)
			c := dial(t, ln)
			p.next(t, "a transition", func(ev jsonEvent) bool { return c.isClient(ev) || c.isServer(ev) })
			p.stop(t)
			continue
		}
		stdout, stderr, code := runFault(t, append([]string{"mountns", "no-bpffs", "tcptrace"}, append(args, "--output", "json")...)...)
		if code != 0 || !strings.Contains(stdout, fmt.Sprintf(`"remote_port":%d`, c.clientPort)) &&
			!strings.Contains(stdout, fmt.Sprintf(`"port":%d`, c.port)) {
			t.Errorf("%s without bpffs: exit %d, want 0 and the leak listed; stdout:\n%s\nstderr:\n%s", args[0], code, stdout, stderr)
		}
	}
}

// No tracefs or debugfs mounted: the classic tracepoint needs tracefs,
// and tcptrace mounts it (in its own mount namespace here); without
// CAP_SYS_ADMIN it cannot, and says so in one line. tp_btf needs none.
func TestNoTracefs(t *testing.T) {
	testenv.RequirePrivileged(t)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	for _, attach := range []string{"tracepoint", "auto"} {
		p := startFaultTracer(t, "no-tracefs", "trace", "--attach", attach, "--port", portArg(ln))
		c := dial(t, ln)
		p.next(t, "a transition of the connection", func(ev jsonEvent) bool { return c.isClient(ev) || c.isServer(ev) })
		p.stop(t)
		if want := "point=tracepoint/"; attach == "tracepoint" && !strings.Contains(p.stderr.String(), want) {
			t.Errorf("--attach tracepoint: stderr does not say %q:\n%s", want, p.stderr.String())
		}
	}
	testenv.RequireTool(t, "setpriv", "util-linux")
	caps := "+bpf,+perfmon"
	if memlockCharged(t) {
		caps += ",+sys_resource"
	}
	_, stderr, code := runFault(t, "mountns", "no-tracefs", "setpriv", "--bounding-set=-all,"+caps, "--inh-caps=-all",
		"@tcptrace", "trace", "--attach", "tracepoint")
	if code != 1 {
		t.Errorf("--attach tracepoint without tracefs nor CAP_SYS_ADMIN: exit %d, want 1; stderr:\n%s", code, stderr)
	}
	oneErrorLine(t, "--attach tracepoint without tracefs nor CAP_SYS_ADMIN", stderr, "tracefs", "CAP_SYS_ADMIN")
}

// memlockCharged probes whether the kernel charges eBPF memory to
// RLIMIT_MEMLOCK (before Linux 5.11) rather than to the memory cgroup.
func memlockCharged(t *testing.T) bool {
	t.Helper()
	out, stderr, code := runFault(t, "memlock-probe")
	if code != 0 {
		t.Fatalf("memlock probe: exit %d: %s %s", code, out, stderr)
	}
	return strings.TrimSpace(out) == "charged"
}

// A cgroup v1 host: no cgroup2 mounted; /sys/fs/cgroup holds v1
// hierarchies and a container's processes are in /docker/<id> of them.
// Simulated in a private mount namespace, on the running kernel: a named
// v1 hierarchy of the test's own (as systemd's name=systemd is) is the
// only thing under /sys/fs/cgroup, and the leaking process is in its
// /docker/<id>. Not simulated: the kernel still has its unified hierarchy
// (a socket's cgroup_id is its creator's real cgroup v2, where on a v1
// host it is the v2 root's), and the host's controllers stay where they
// are. tcptrace runs, takes the container id from the holder's
// /proc/PID/cgroup, and refuses --cgroup and --container (cgroup v2
// selectors) in one line each.
func TestCgroupV1Host(t *testing.T) {
	testenv.RequirePrivileged(t)
	v1 := filepath.Join(t.TempDir(), "systemd")
	if err := os.Mkdir(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("cgroup", v1, "cgroup", 0, "none,name=tcptrace-test"); err != nil {
		t.Fatalf("mount a named cgroup v1 hierarchy: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(v1, unix.MNT_DETACH) })
	id := strings.Repeat("c1", 32)
	cg := filepath.Join(v1, "docker", id)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cg); os.Remove(filepath.Dir(cg)) }) // after the helper is gone
	t.Setenv(helperCgroupEnv, cg)
	h, port, client, _ := leakFrom(t, "leak")
	os.Unsetenv(helperCgroupEnv)
	if data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", h.cmd.Process.Pid)); !strings.Contains(string(data), "name=tcptrace-test:/docker/"+id) {
		t.Fatalf("the helper is not in the v1 cgroup:\n%s", data)
	}

	setup := "cgroup-v1:" + v1
	p := startFaultTracer(t, setup, "closewait", "--port", port, "--threshold", "200ms")
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	ev := p.next(t, "stuck", func(ev jsonEvent) bool { return ev.Event == "stuck" && strconv.Itoa(ev.LocalPort) == port })
	checkOwners(t, ev, h.cmd.Process.Pid)
	if ev.ContainerID != id {
		t.Errorf("stuck on a v1 host: container_id %q, want %s (from the holder's /proc/PID/cgroup)", ev.ContainerID, id)
	}
	p.stop(t)
	if !strings.Contains(p.stderr.String(), "no cgroup v2 hierarchy") {
		t.Errorf("stderr does not say there is no cgroup v2 hierarchy:\n%s", p.stderr.String())
	}

	for _, args := range [][]string{
		{"closewait", "--cgroup", "/docker"},
		{"kill", "--older-than", "0s", "--any-age", "--dry-run", "--container", id},
	} {
		_, stderr, code := runFault(t, append([]string{"mountns", setup, "tcptrace"}, args...)...)
		if code != 2 {
			t.Errorf("%v on a v1 host: exit %d, want 2; stderr:\n%s", args, code, stderr)
		}
		oneErrorLine(t, strings.Join(args, " "), stderr, "no cgroup v2 hierarchy")
	}
	for _, args := range [][]string{
		{"kill", "--older-than", "0s", "--any-age", "--dry-run", "--pid", strconv.Itoa(h.cmd.Process.Pid)},
		{"top", "--once", "--duration", "1s", "--port", port},
	} {
		stdout, stderr, code := runFault(t, append([]string{"mountns", setup, "tcptrace"}, append(args, "--output", "json")...)...)
		if code != 0 || !strings.Contains(stdout, `"local_port":`+port) && !strings.Contains(stdout, `"port":`+port) {
			t.Errorf("%s on a v1 host: exit %d, want 0 and the leak listed; stdout:\n%s\nstderr:\n%s", args[0], code, stdout, stderr)
		}
	}
}

// RLIMIT_MEMLOCK at 64 KiB (what 5.10 gives processes) and no
// CAP_SYS_RESOURCE to raise it: where the kernel charges eBPF memory to
// that limit (before 5.11; probed, not assumed from the version) tcptrace
// fails in one line naming the limit and the capability; elsewhere it
// runs as usual.
func TestMemlockLimit(t *testing.T) {
	testenv.RequirePrivileged(t)
	testenv.RequireTool(t, "setpriv", "util-linux")
	charged := memlockCharged(t)
	t.Logf("the kernel charges eBPF memory to RLIMIT_MEMLOCK: %v", charged)
	for _, c := range []struct {
		caps string
		args []string
	}{
		{"+bpf,+perfmon,+sys_ptrace,+dac_read_search", []string{"top", "--once", "--duration", "1s", "--output", "json"}},
		{"+bpf,+perfmon,+net_admin,+sys_admin,+sys_ptrace,+dac_read_search", []string{"kill", "--older-than", "0s", "--any-age", "--dry-run"}},
	} {
		stdout, stderr, code := runFault(t, append([]string{"memlock", "65536", "setpriv", "--bounding-set=-all," + c.caps, "--inh-caps=-all", "@tcptrace"}, c.args...)...)
		if !charged {
			if code != 0 {
				t.Errorf("%s with RLIMIT_MEMLOCK 64 KiB on a kernel that does not charge it: exit %d; stdout %q stderr:\n%s", c.args[0], code, stdout, stderr)
			}
			continue
		}
		if code != 1 {
			t.Errorf("%s with RLIMIT_MEMLOCK 64 KiB and no CAP_SYS_RESOURCE: exit %d, want 1; stderr:\n%s", c.args[0], code, stderr)
		}
		oneErrorLine(t, c.args[0]+" with RLIMIT_MEMLOCK 64 KiB", stderr, "RLIMIT_MEMLOCK", "CAP_SYS_RESOURCE")
	}
}

// vmEnv is set by scripts/vminit, PID 1 of the kernel matrix's VMs (make
// vmtest): the machine is a throwaway one.
const vmEnv = "TCPTRACE_TEST_VM"

// requireVM skips a test that changes the whole machine (its wall clock,
// its kernel modules) anywhere but in the kernel matrix's VMs. The skip is
// not turned into a failure by TCPTRACE_REQUIRE_PRIVILEGED: such a test
// must not run on a developer's or CI's host at all.
func requireVM(t *testing.T, what string) {
	t.Helper()
	if os.Getenv(vmEnv) != "1" {
		t.Skipf("%s, which changes the whole machine: runs only in the kernel matrix's VMs (make vmtest; scripts/vminit sets %s=1)", what, vmEnv)
	}
	testenv.RequirePrivileged(t)
}

// kfuncDestroy probes the bpf_sock_destroy kfunc (Linux 6.5+) as kill
// does.
func kfuncDestroy(t *testing.T) bool {
	t.Helper()
	d, err := tracer.NewDestroyerWith(tracer.DestroyKfunc)
	if err != nil {
		t.Logf("no bpf_sock_destroy kfunc here: %v", err)
		return false
	}
	d.Close()
	return true
}

// bpf_sock_destroy missing (before Linux 6.5: 5.10 and 6.1 in the kernel
// matrix): kill destroys with sock_diag's SOCK_DESTROY instead, and says
// which method it used. Where the kfunc loads, kill uses it.
func TestKillMethodIsWhatTheKernelOffers(t *testing.T) {
	f := startFixture(t)
	want := tracer.DestroySockDiag
	if kfuncDestroy(t) {
		want = tracer.DestroyKfunc
	}
	evs, stderr, code := kill(t, "--older-than", "0s", "--any-age", "--netns", strconv.FormatUint(f.netns, 10),
		"--port", strconv.Itoa(f.portA), "--yes")
	got := f.byClient(t, evs, "destroyed")
	if code != 0 || names(got) != "a1,a2" {
		t.Fatalf("kill: exit %d, %v, want a1 and a2 destroyed:\n%s", code, evs, stderr)
	}
	for name, ev := range got {
		if ev.Method != want {
			t.Errorf("%s destroyed with method %q, want %q", name, ev.Method, want)
		}
	}
	if !strings.Contains(stderr, "method="+want) {
		t.Errorf("kill's log does not say method=%s:\n%s", want, stderr)
	}
	if probe := f.probe(t); probe["a1"] != "ECONNABORTED" || probe["a2"] != "ECONNABORTED" || probe["a3"] != "open" {
		t.Errorf("after kill: %v, want a1 and a2 destroyed, a3 open", probe)
	}
}

// SOCK_DESTROY missing: TCP unknown to sock_diag (the tcp_diag module not
// loaded, and no modprobe to load it, as in the VM; Debian builds it as a
// module), in the kernel matrix's VMs only, as it unloads the module.
// With the kfunc, kill needs no sock_diag and destroys; without it (before
// 6.5), kill fails in one line naming tcp_diag (and the kfunc's Linux 6.5
// when it got that far), and destroys nothing. Its listing either finds
// the sockets (the listing program reads their cookies from Linux 5.12)
// or fails in one line naming tcp_diag: before 5.12 the cookies come from
// sock_diag, and it used to leave every socket out without a word ("no
// socket in CLOSE-WAIT matches"). top's peers, read with sock_diag, are
// missing with a warning naming tcp_diag (the dump's error was dropped:
// no peers, no word).
func TestKillWithoutSockDiag(t *testing.T) {
	requireVM(t, "unloads the tcp_diag module")
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	dir := "/modules/" + unix.ByteSliceToString(uts.Release[:])
	if order, err := os.ReadFile(dir + "/order"); err != nil || !strings.Contains(string(order), "tcp_diag.ko") {
		t.Skipf("tcp_diag is built into this kernel (no module in %s): it cannot be unloaded", dir)
	}
	f := startFixture(t)
	kfunc := kfuncDestroy(t)
	if err := unix.DeleteModule("tcp_diag", unix.O_NONBLOCK); err != nil {
		t.Fatalf("unload tcp_diag: %v", err)
	}
	t.Cleanup(func() {
		m, err := os.Open(dir + "/tcp_diag.ko")
		if err == nil {
			err = unix.FinitModule(int(m.Fd()), "", 0)
			m.Close()
		}
		if err != nil {
			t.Errorf("load tcp_diag again: %v: the tests after this one will fail", err)
		}
	})
	ns, portA := strconv.FormatUint(f.netns, 10), strconv.Itoa(f.portA)

	evs, stderr, code := kill(t, "--older-than", "0s", "--any-age", "--netns", ns, "--port", portA, "--dry-run")
	listing := code == 0
	if listed := f.byClient(t, evs, "not_destroyed"); code != 0 || names(listed) != "a1,a2" {
		if code != 1 {
			t.Errorf("kill --dry-run without tcp_diag: exit %d, %v; want a1 and a2 listed, or exit 1 naming tcp_diag:\n%s", code, evs, stderr)
		}
		oneErrorLine(t, "kill --dry-run without tcp_diag", stderr, "tcp_diag")
	}

	evs, stderr, code = kill(t, "--older-than", "0s", "--any-age", "--netns", ns, "--port", portA, "--yes")
	probe := f.probe(t)
	if kfunc {
		if got := f.byClient(t, evs, "destroyed"); code != 0 || names(got) != "a1,a2" || got["a1"].Method != tracer.DestroyKfunc {
			t.Errorf("kill without tcp_diag, with the kfunc: exit %d, %v; want a1 and a2 destroyed by the kfunc:\n%s", code, evs, stderr)
		}
		if probe["a1"] != "ECONNABORTED" || probe["a2"] != "ECONNABORTED" {
			t.Errorf("after kill: %v, want a1 and a2 destroyed", probe)
		}
	} else {
		if code != 1 || len(evs) != 0 {
			t.Errorf("kill without tcp_diag nor the kfunc: exit %d, %v; want exit 1 and nothing destroyed:\n%s", code, evs, stderr)
		}
		want := []string{"tcp_diag"}
		if listing {
			want = append(want, "6.5") // it failed at the destroy
		}
		oneErrorLine(t, "kill without tcp_diag nor the kfunc", stderr, want...)
		if probe["a1"] != "eof" || probe["a2"] != "eof" {
			t.Errorf("after a failed kill: %v, want a1 and a2 still in CLOSE-WAIT", probe)
		}
	}

	top := tcptraceCmd(nil, "top", "--once", "--duration", "1s", "--output", "json")
	var out, topErr bytes.Buffer
	top.Stdout, top.Stderr = &out, &topErr
	if err := top.Run(); err != nil || !strings.Contains(topErr.String(), "tcp_diag") {
		t.Errorf("top --once without tcp_diag: %v, want exit 0 and a warning naming tcp_diag; stderr:\n%s", err, topErr.String())
	}
}

// nsLeak is one network namespace of manyNetNS, kept by a bind mount
// under /run/netns (as ip netns add keeps one), with the server side of a
// loopback connection in CLOSE-WAIT held by this process.
type nsLeak struct {
	ino         uint64
	srv, client *net.TCPConn // the client shut down its side: FIN_WAIT2
	clientPort  int
}

// manyNetNS makes n network namespaces, each with a leak on port, made on
// threads of their own (a thread that unshared its namespace exits with
// its goroutine). Cleaned up with the test.
func manyNetNS(t *testing.T, n, port int) map[uint64]*nsLeak {
	t.Helper()
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		t.Fatal(err)
	}
	type result struct {
		leak *nsLeak
		path string
		err  error
	}
	results := make(chan result, n)
	sem := make(chan struct{}, 8)
	for i := range n {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			runtime.LockOSThread() // never unlocked: the thread leaves with the goroutine
			r := result{path: fmt.Sprintf("/run/netns/tcptrace-faults-%d-%d", os.Getpid(), i)}
			r.leak, r.err = leakInNewNetNS(r.path, port)
			results <- r
		}()
	}
	leaks := make(map[uint64]*nsLeak, n)
	var failed error
	for range n {
		r := <-results
		if r.path != "" {
			t.Cleanup(func() { _ = unix.Unmount(r.path, unix.MNT_DETACH); os.Remove(r.path) })
		}
		if r.err != nil {
			failed = r.err
			continue
		}
		t.Cleanup(func() { r.leak.srv.Close(); r.leak.client.Close() })
		leaks[r.leak.ino] = r.leak
	}
	if failed != nil {
		t.Fatalf("make %d network namespaces: %v", n, failed)
	}
	return leaks
}

// leakInNewNetNS moves the calling thread (locked) to a new network
// namespace, bind-mounts it at path and leaks a connection there.
func leakInNewNetNS(path string, port int) (*nsLeak, error) {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("unshare: %w", err)
	}
	if err := loopback.Up(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		return nil, err
	}
	if err := unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
		return nil, fmt.Errorf("bind mount %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, err
	}
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	cl, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, err
	}
	srv, err := ln.AcceptTCP()
	if err != nil {
		cl.Close()
		return nil, err
	}
	if err := cl.CloseWrite(); err != nil {
		return nil, err
	}
	return &nsLeak{ino: st.Ino, srv: srv, client: cl, clientPort: cl.LocalAddr().(*net.TCPAddr).Port}, nil
}

// tcpState is the kernel's TCP state of c (8: CLOSE_WAIT, 7: CLOSE).
func tcpState(t *testing.T, c *net.TCPConn) uint8 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var state uint8
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	})
	return state
}

// 1,000 network namespaces, as a node running that many pods, each with a
// socket in CLOSE-WAIT (its client in FIN_WAIT2): kill --dry-run lists
// every one with its holder, closewait reports every one stuck with its
// holder and the diagnosis read in its namespace, top's peers listing
// finds every FIN_WAIT2 client (the report shows the first 100 and says
// how many it left out), and kill destroys every one. No assertion on
// time: each step has the deadlines every test has.
func TestThousandNetworkNamespaces(t *testing.T) {
	testenv.RequirePrivileged(t)
	n := 1000
	if os.Getenv(vmEnv) == "1" {
		// Under emulation 1,000 take two minutes; the kernel matrix checks
		// each kernel's behaviour, the host run the scale.
		n = 250
		t.Logf("%s=1: %d namespaces", vmEnv, n)
	}
	// This process holds the port in its own namespace, so that no socket
	// there uses it meanwhile.
	hold := listen(t, "tcp4", "0.0.0.0:0")
	port := listenerPort(hold)
	t0 := time.Now()
	leaks := manyNetNS(t, n, port)
	t.Logf("%d network namespaces made in %v", n, time.Since(t0))
	self := os.Getpid()
	checkEach := func(what string, evs []jsonEvent, kind string, check func(*nsLeak, jsonEvent)) {
		t.Helper()
		seen := map[uint64]bool{}
		for _, ev := range evs {
			l := leaks[ev.NetNS]
			if ev.Event != kind || l == nil || ev.LocalPort != port || ev.RemotePort != l.clientPort {
				continue // not one of ours
			}
			if seen[ev.NetNS] {
				t.Errorf("%s: namespace %d twice: %v", what, ev.NetNS, ev)
			}
			seen[ev.NetNS] = true
			if ev.OwnerSource != "proc" || len(ev.Owner) != 1 || ev.Owner[0].PID != self {
				t.Errorf("%s: %v, want its holder, this process (%d)", what, ev, self)
			}
			check(l, ev)
		}
		if len(seen) != n {
			t.Errorf("%s: %d of the %d namespaces' sockets", what, len(seen), n)
		}
	}

	t0 = time.Now()
	evs, stderr, code := kill(t, "--older-than", "0s", "--any-age", "--port", strconv.Itoa(port), "--dry-run")
	if code != 0 {
		t.Fatalf("kill --dry-run: exit %d:\n%s", code, stderr)
	}
	t.Logf("kill --dry-run took %v", time.Since(t0))
	checkEach("kill --dry-run", evs, "not_destroyed", func(_ *nsLeak, ev jsonEvent) {
		if ev.Reason != "dry_run" {
			t.Errorf("kill --dry-run: %v", ev)
		}
	})

	t0 = time.Now()
	p := startTracer(t, "closewait", "--port", strconv.Itoa(port), "--threshold", "1s")
	var stuck []jsonEvent
	for len(stuck) < n {
		stuck = append(stuck, p.next(eventTimeout, fmt.Sprintf("stuck report %d of %d", len(stuck)+1, n), func(ev jsonEvent) bool {
			return ev.Event == "stuck" && leaks[ev.NetNS] != nil
		}))
	}
	p.stop()
	t.Logf("closewait: %d stuck reports in %v", n, time.Since(t0))
	checkEach("closewait's stuck reports", stuck, "stuck", func(_ *nsLeak, ev jsonEvent) {
		// The server never read since its peer closed: no EOF read, no data.
		if ev.ReadEOF == nil || *ev.ReadEOF || ev.UnreadBytes == nil || *ev.UnreadBytes != 0 || ev.SinceSendNS == nil || ev.SinceRecvNS == nil {
			t.Errorf("stuck without its diagnosis (read in its namespace): %v", ev)
		}
	})

	t0 = time.Now()
	peers, err := tracer.ListPeers(0)
	if err != nil {
		t.Errorf("ListPeers: %v", err)
	}
	found := 0
	for _, pr := range peers {
		if leaks[uint64(pr.NetNS)] != nil && int(pr.Remote.Port()) == port && pr.FinWait2 == 1 {
			found++
		}
	}
	if found != n {
		t.Errorf("the peers listing found FIN_WAIT2 clients in %d of the %d namespaces", found, n)
	}
	t.Logf("peers listed in %v", time.Since(t0))
	t0 = time.Now()
	r := topOnce(t, "--duration", "1s", "--port", strconv.Itoa(port))
	t.Logf("top --once took %v", time.Since(t0))
	if row := rowOf(r, port); row == nil || row.InCloseWait < uint64(n) {
		t.Errorf("top: row %+v, want %d sockets in CLOSE-WAIT on port %d", row, n, port)
	}
	shown := 0
	for _, pr := range r.Peers {
		if leaks[uint64(pr.NetNS)] != nil && pr.Addr == fmt.Sprintf("127.0.0.1:%d", port) && pr.FinWait2 == 1 {
			shown++
		}
	}
	if shown != len(r.Peers) || shown+r.PeersOmitted < n {
		t.Errorf("top: %d peers shown (%d ours), %d left out, want ours only and %d in all", len(r.Peers), shown, r.PeersOmitted, n)
	}

	t0 = time.Now()
	evs, stderr, code = kill(t, "--older-than", "0s", "--any-age", "--port", strconv.Itoa(port), "--yes")
	if code != 0 {
		t.Fatalf("kill: exit %d:\n%s", code, stderr)
	}
	t.Logf("kill took %v", time.Since(t0))
	checkEach("kill", evs, "destroyed", func(l *nsLeak, ev jsonEvent) {
		if st := tcpState(t, l.srv); st != 7 {
			t.Errorf("destroyed %v, but its socket is in state %d, want CLOSE (7)", ev, st)
		}
	})
}

func selfLeak(fail func(error), args []string) {
	port := "0"
	if len(args) > 0 {
		port = args[0]
	}
	if err := loopback.Up(); err != nil {
		fail(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:"+port)
	if err != nil {
		fail(err)
	}
	cl, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		fail(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		fail(err)
	}
	// Deferred, so that they stay reachable: a net.Conn the collector
	// finds unreachable is closed by its finalizer.
	defer srv.Close()
	defer cl.Close()
	if err := cl.(*net.TCPConn).CloseWrite(); err != nil {
		fail(err)
	}
	fmt.Println("leak", ln.Addr().(*net.TCPAddr).Port, cl.LocalAddr().(*net.TCPAddr).Port)
	ln.Close()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "probe" {
			continue
		}
		srv.SetDeadline(time.Now().Add(time.Second))
		_, err := srv.Write([]byte{1})
		if err == nil {
			_, err = srv.Read(make([]byte, 1))
		}
		var errno syscall.Errno
		switch {
		case errors.Is(err, io.EOF):
			fmt.Println("eof")
		case errors.As(err, &errno):
			fmt.Println(unix.ErrnoName(errno))
		default:
			fmt.Println(strings.ReplaceAll(fmt.Sprint(err), " ", "_"))
		}
	}
	os.Exit(0)
}

// pidnsInit is PID 1 of a pid namespace of its own (with a mount
// namespace where /proc is that pid namespace's, and a network namespace):
// there it can choose the pid of the next process (ns_last_pid), so that
// a new process gets the pid of one that died. It obeys stdin:
//
//	leak NAME PID PORT  start a self-leak named NAME at pid PID (0: any) on
//	        PORT (0: any); prints "leaked NAME PID PORT CLIENTPORT"
//	kill NAME           SIGKILL it and reap it; prints "killed NAME"
//	probe NAME          prints "probe NAME RESULT" (see self-leak)
//	ask ARGS...         run tcptrace ARGS on a terminal; prints "out LINE"
//	        for each line it writes, "prompt" at its question
//	answer TEXT         answer it; prints its remaining lines, "exit CODE"
//	run ARGS...         run tcptrace ARGS; prints "out LINE" for each line
//	        of its stdout, then "exit CODE"
func pidnsInit(fail func(error)) {
	if os.Getpid() != 1 {
		fail(fmt.Errorf("pidns: pid %d, want 1 (CLONE_NEWPID)", os.Getpid()))
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fail(err)
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		fail(fmt.Errorf("mount this pid namespace's /proc: %w", err))
	}
	if err := loopback.Up(); err != nil {
		fail(err)
	}
	type leaker struct {
		cmd   *exec.Cmd
		stdin io.Writer
		out   *bufio.Scanner
	}
	leakers := map[string]*leaker{}
	start := func(name, port string) (*leaker, error) {
		cmd := helperCommand("faults", "self-leak", port)
		cmd.Env = append(cmd.Env, helperCommEnv+"="+name)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		return &leaker{cmd, stdin, bufio.NewScanner(stdout)}, nil
	}
	var ptyOut chan string
	var ptyFile *os.File
	var ptyCmd *exec.Cmd
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "leak":
			name, pid := f[1], f[2]
			want, _ := strconv.Atoi(pid)
			var l *leaker
			// The runtime's own threads take pids too: try again until the
			// process gets the one asked for.
			for try := 0; ; try++ {
				if want > 0 {
					if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(want-1)), 0); err != nil {
						fail(err)
					}
				}
				var err error
				if l, err = start(name, f[3]); err != nil {
					fail(err)
				}
				if want == 0 || l.cmd.Process.Pid == want {
					break
				}
				_ = l.cmd.Process.Kill()
				_ = l.cmd.Wait()
				if try == 20 {
					fail(fmt.Errorf("pid %d: the new process got %d, 20 times", want, l.cmd.Process.Pid))
				}
			}
			if !l.out.Scan() {
				fail(fmt.Errorf("leak %s: no output", name))
			}
			var port, client int
			if _, err := fmt.Sscanf(l.out.Text(), "leak %d %d", &port, &client); err != nil {
				fail(fmt.Errorf("leak %s: %q: %w", name, l.out.Text(), err))
			}
			leakers[name] = l
			fmt.Println("leaked", name, l.cmd.Process.Pid, port, client)
		case "kill":
			l := leakers[f[1]]
			_ = l.cmd.Process.Kill()
			_ = l.cmd.Wait()
			delete(leakers, f[1])
			fmt.Println("killed", f[1])
		case "probe":
			l := leakers[f[1]]
			fmt.Fprintln(l.stdin, "probe")
			if !l.out.Scan() {
				fail(fmt.Errorf("probe %s: no answer", f[1]))
			}
			fmt.Println("probe", f[1], l.out.Text())
		case "ask":
			ptyCmd = exec.Command(os.Args[0], f[1:]...)
			ptyCmd.Env = append(os.Environ(), runMainEnv+"=1")
			var err error
			if ptyFile, err = pty.StartWithSize(ptyCmd, &pty.Winsize{Rows: 50, Cols: 250}); err != nil {
				fail(err)
			}
			ptyOut = make(chan string, 1000)
			go func() {
				defer close(ptyOut)
				var line []byte
				buf := make([]byte, 4096)
				for {
					n, err := ptyFile.Read(buf)
					for _, b := range buf[:n] {
						switch b {
						case '\r':
						case '\n':
							ptyOut <- string(line)
							line = line[:0]
						default:
							line = append(line, b)
							if bytes.HasSuffix(line, []byte("[y/N] ")) {
								ptyOut <- "\x00prompt"
								line = line[:0]
							}
						}
					}
					if err != nil {
						return
					}
				}
			}()
			for l := range ptyOut {
				if l == "\x00prompt" {
					fmt.Println("prompt")
					break
				}
				fmt.Println("out", l)
			}
		case "answer":
			fmt.Fprintln(ptyFile, strings.Join(f[1:], " "))
			err := ptyCmd.Wait()
			for l := range ptyOut { // ends once its terminal is read to the end
				fmt.Println("out", l)
			}
			ptyFile.Close()
			fmt.Println("exit", exitCodeOf(err))
		case "run":
			cmd := exec.Command(os.Args[0], f[1:]...)
			cmd.Env = append(os.Environ(), runMainEnv+"=1")
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				fmt.Println("out", l)
			}
			fmt.Println("exit", exitCodeOf(err))
		default:
			fail(fmt.Errorf("pidns: unknown command %q", in.Text()))
		}
	}
	os.Exit(0)
}

// exitCodeOf is the exit code that err (of exec.Cmd.Run or Wait) says.
func exitCodeOf(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// pidnsEvents reads a pidns helper's "out" lines as events until a line
// that is not one ("prompt", "exit N"), which it returns too.
func pidnsEvents(t *testing.T, h *helper) ([]jsonEvent, string) {
	t.Helper()
	var evs []jsonEvent
	for {
		l := h.line(t)
		text, ok := strings.CutPrefix(l, "out ")
		if !ok {
			return evs, l
		}
		if !strings.HasPrefix(text, "{") {
			continue // not an event: the question's own words
		}
		if err := schemacheck.Line(t, text); err != nil {
			t.Errorf("line fails the schema: %v\n%s", err, text)
		}
		var ev jsonEvent
		if err := json.Unmarshal([]byte(text), &ev); err != nil {
			t.Fatalf("%v: %q", err, text)
		}
		evs = append(evs, ev)
	}
}

// A pid reused between kill's listing and its destroy: kill lists a
// socket of holder-a (pid P) and asks; meanwhile holder-a dies (its
// socket closes) and holder-b starts with the same pid P (chosen with
// ns_last_pid, in a pid namespace of the test's own) and leaks a socket on
// the same port. Answered yes, kill destroys nothing: the socket it
// listed is gone, and holder-b's socket, never listed, is left alone
// (sockets are destroyed by cookie, not by pid or addresses). Its report
// names holder-a, who held the listed socket, never holder-b. A fresh
// listing names holder-b.
func TestKillPidReused(t *testing.T) {
	testenv.RequirePrivileged(t)
	h := startHelperWith(t, "faults", syscall.CLONE_NEWPID|syscall.CLONE_NEWNS|syscall.CLONE_NEWNET, "pidns")
	const pid = 300
	leak := func(name string, port int) (gotPid, gotPort, client int) {
		t.Helper()
		fmt.Fprintf(h.stdin, "leak %s %d %d\n", name, pid, port)
		var got string
		if _, err := fmt.Sscanf(h.line(t), "leaked %s %d %d %d", &got, &gotPid, &gotPort, &client); err != nil || got != name {
			t.Fatalf("leak %s: %v", name, err)
		}
		return gotPid, gotPort, client
	}
	pidA, port, clientA := leak("holder-a", 0)
	if pidA != pid {
		t.Fatalf("holder-a got pid %d, want %d", pidA, pid)
	}
	args := fmt.Sprintf("kill --output json --older-than 0s --any-age --port %d", port)
	fmt.Fprintln(h.stdin, "ask", args)
	listed, end := pidnsEvents(t, h)
	if end != "prompt" || len(listed) != 1 || listed[0].RemotePort != clientA || listed[0].Reason != "awaiting_confirmation" ||
		len(listed[0].Owner) != 1 || listed[0].Owner[0].PID != pid || listed[0].Owner[0].Comm != "holder-a" {
		t.Fatalf("kill listed %v, then %q; want holder-a's socket (client port %d), pid %d, and the question", listed, end, clientA, pid)
	}

	fmt.Fprintln(h.stdin, "kill holder-a")
	if l := h.line(t); l != "killed holder-a" {
		t.Fatalf("kill holder-a: %q", l)
	}
	pidB, _, clientB := leak("holder-b", port)
	if pidB != pid {
		t.Fatalf("holder-b got pid %d, want holder-a's %d", pidB, pid)
	}

	fmt.Fprintln(h.stdin, "answer y")
	results, end := pidnsEvents(t, h)
	if end != "exit 0" {
		t.Errorf("kill answered yes: %q, want exit 0", end)
	}
	if len(results) != 1 {
		t.Fatalf("kill answered yes reported %v, want holder-a's socket only", results)
	}
	r := results[0]
	if r.Event != "not_destroyed" || (r.Reason != "not_found" && r.Reason != "left_close_wait") || r.RemotePort != clientA {
		t.Errorf("kill answered yes: %v, want holder-a's socket not destroyed (gone)", r)
	}
	if len(r.Owner) != 1 || r.Owner[0].Comm != "holder-a" {
		t.Errorf("kill answered yes: owner %v, want holder-a (pid %d), who held the listed socket", r.Owner, pid)
	}
	fmt.Fprintln(h.stdin, "probe holder-b")
	if l := h.line(t); l != "probe holder-b eof" {
		t.Errorf("holder-b's socket after kill: %q, want it still in CLOSE-WAIT (eof)", l)
	}

	fmt.Fprintln(h.stdin, "run", args, "--dry-run")
	fresh, end := pidnsEvents(t, h)
	if end != "exit 0" || len(fresh) != 1 || fresh[0].RemotePort != clientB || len(fresh[0].Owner) != 1 ||
		fresh[0].Owner[0].PID != pid || fresh[0].Owner[0].Comm != "holder-b" {
		t.Errorf("a fresh kill --dry-run: %v, %q; want holder-b's socket (client port %d), pid %d", fresh, end, clientB, pid)
	}
}

// programsGone waits until none of ids is loaded any more: the kernel
// frees a program once its last descriptor and link are gone.
func programsGone(t *testing.T, what string, ids []ebpf.ProgramID) {
	t.Helper()
	faultWait(t, what+": its eBPF programs freed", func() bool {
		for _, id := range ids {
			if prog, err := ebpf.NewProgramFromID(id); err == nil {
				prog.Close()
				return false
			}
		}
		return true
	})
}

// bpffsEntries lists /sys/fs/bpf (nothing when no bpffs is mounted there).
func bpffsEntries() string {
	entries, _ := os.ReadDir("/sys/fs/bpf")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// closeWaitOnPort counts the sockets in CLOSE-WAIT of this network
// namespace with local port port, and those in any other state but
// LISTEN, as ss lists them.
func closeWaitOnPort(t *testing.T, port int) (closeWait, other int) {
	t.Helper()
	out, err := exec.Command(testenv.RequireTool(t, "ss", "iproute2"), "-Htan", "sport", "= :"+strconv.Itoa(port)).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch f := strings.Fields(l); {
		case len(f) == 0, f[0] == "LISTEN":
		case f[0] == "CLOSE-WAIT":
			closeWait++
		default:
			other++
		}
	}
	return closeWait, other
}

// SIGKILL in the middle of kill, at the points where it waits, found by
// what it waits on and not by time: on its --from tracer (before
// anything is loaded), at its question (the listing done), and blocked
// writing its report (every socket destroyed, the destroy program still
// loaded: stdout is a one-page pipe nobody reads). Each time, the kernel
// frees whatever kill had loaded, nothing is left pinned, every socket is
// either destroyed or as it was (never left in between), and a second
// kill completes: destroys what is left, or finds nothing left to do.
func TestSIGKILLInTheMiddleOfKill(t *testing.T) {
	testenv.RequirePrivileged(t)
	pinned := bpffsEntries()
	check := func(what string, pid int, progs []ebpf.ProgramID) {
		t.Helper()
		programsGone(t, what, progs)
		if got := bpffsEntries(); got != pinned {
			t.Errorf("%s: /sys/fs/bpf holds %q, %q before", what, got, pinned)
		}
	}

	t.Run("waiting on --from", func(t *testing.T) {
		f := startFixture(t)
		entered, release := make(chan struct{}), make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		defer srv.Close()
		defer close(release)
		cmd := tcptraceCmd(nil, "kill", "--output", "json", "--from", srv.URL, "--older-than", "0s",
			"--netns", strconv.FormatUint(f.netns, 10), "--port", strconv.Itoa(f.portA), "--yes")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-entered:
		case <-time.After(eventTimeout):
			_ = cmd.Process.Kill()
			t.Fatal("kill never asked its --from tracer")
		}
		progs := programsOf(t, cmd.Process.Pid)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		check("killed waiting on --from", cmd.Process.Pid, progs)
		if got := f.probe(t); got["a1"] != "eof" || got["a2"] != "eof" || got["a3"] != "open" {
			t.Errorf("killed waiting on --from: %v, want every socket as it was", got)
		}
		secondKill(t, f, "a1,a2")
	})

	t.Run("at its question", func(t *testing.T) {
		f := startFixture(t)
		cmd := tcptraceCmd(nil, "kill", "--older-than", "0s", "--any-age",
			"--netns", strconv.FormatUint(f.netns, 10), "--port", strconv.Itoa(f.portA))
		tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 200})
		if err != nil {
			t.Fatal(err)
		}
		defer tty.Close()
		var screen bytes.Buffer
		buf := make([]byte, 4096)
		for !strings.Contains(screen.String(), "[y/N]") {
			tty.SetReadDeadline(time.Now().Add(eventTimeout))
			n, err := tty.Read(buf)
			screen.Write(buf[:n])
			if err != nil {
				_ = cmd.Process.Kill()
				t.Fatalf("no question on the terminal: %v\n%s", err, screen.String())
			}
		}
		progs := programsOf(t, cmd.Process.Pid)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		check("killed at its question", cmd.Process.Pid, progs)
		if got := f.probe(t); got["a1"] != "eof" || got["a2"] != "eof" || got["a3"] != "open" {
			t.Errorf("killed at its question: %v, want every socket as it was", got)
		}
		secondKill(t, f, "a1,a2")
	})

	t.Run("writing its report", func(t *testing.T) {
		// Enough sockets that their report overflows a page.
		_, port := leakServer(t)
		const n = 40
		for range n {
			c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
		}
		faultWait(t, "the leaks in CLOSE-WAIT", func() bool { cw, _ := closeWaitOnPort(t, port); return cw == n })
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if _, err := unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, os.Getpagesize()); err != nil {
			t.Fatal(err)
		}
		cmd := tcptraceCmd(nil, "kill", "--output", "json", "--older-than", "0s", "--any-age", "--port", strconv.Itoa(port), "--yes")
		cmd.Stdout = w
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w.Close()
		// Blocked: something queued in the pipe, and a thread of kill's
		// asleep in pipe_write (the pipe merges a write into its page only
		// when the whole write fits, so the page is rarely full to the byte).
		for deadline := time.Now().Add(eventTimeout); ; time.Sleep(10 * time.Millisecond) {
			queued, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ) // FIONREAD
			if err == nil && queued > 0 && inPipeWrite(cmd.Process.Pid) {
				break
			}
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				t.Fatalf("kill blocked on its full stdout: not within %v (%d bytes queued, %v; its threads wait in %v)",
					eventTimeout, queued, err, wchans(cmd.Process.Pid))
			}
		}
		progs := programsOf(t, cmd.Process.Pid)
		if kfuncDestroy(t) && len(progs) == 0 {
			t.Errorf("kill, blocked on its report, holds no eBPF program: not the point this test means")
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		check("killed writing its report", cmd.Process.Pid, progs)
		cw, other := closeWaitOnPort(t, port)
		if other != 0 || cw != 0 && cw != n {
			t.Errorf("killed writing its report: %d sockets in CLOSE-WAIT, %d in other states; want each destroyed or as it was", cw, other)
		}
		evs, stderr, code := kill(t, "--older-than", "0s", "--any-age", "--port", strconv.Itoa(port), "--yes")
		if cw, _ := closeWaitOnPort(t, port); code != 0 || cw != 0 {
			t.Errorf("a second kill: exit %d, %d events, %d sockets still in CLOSE-WAIT:\n%s", code, len(evs), cw, stderr)
		}
	})
}

// secondKill runs kill --yes again on the fixture's port A: it must
// destroy want (names) and exit 0.
func secondKill(t *testing.T, f *fixture, want string) {
	t.Helper()
	evs, stderr, code := kill(t, "--older-than", "0s", "--any-age", "--netns", strconv.FormatUint(f.netns, 10),
		"--port", strconv.Itoa(f.portA), "--yes")
	if got := f.byClient(t, evs, "destroyed"); code != 0 || names(got) != want {
		t.Errorf("a second kill: exit %d, %v, want %s destroyed:\n%s", code, evs, want, stderr)
	}
}

// wchans lists where the threads of pid wait in the kernel.
func wchans(pid int) []string {
	var w []string
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/wchan", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		w = append(w, strings.TrimSpace(string(b)))
	}
	return w
}

// inPipeWrite says whether a thread of pid sleeps in the kernel's
// pipe_write (its wchan: anon_pipe_write on newer kernels), or, where the
// kernel gives no wchan (5.10 with the ORC unwinder says 0), sleeps in a
// write(2) to its stdout (/proc/PID/task/TID/syscall: number, then fd).
func inPipeWrite(pid int) bool {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	inWrite := fmt.Sprintf("%d 0x1 ", unix.SYS_WRITE)
	for _, task := range tasks {
		if b, err := os.ReadFile(task + "/wchan"); err == nil && strings.HasSuffix(strings.TrimSpace(string(b)), "pipe_write") {
			return true
		}
		stat, _ := os.ReadFile(task + "/stat")
		sc, _ := os.ReadFile(task + "/syscall")
		// stat: "tid (comm) S ...": asleep, not just passing through.
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && bytes.HasPrefix(stat[i:], []byte(") S")) &&
			strings.HasPrefix(string(sc), inWrite) {
			return true
		}
	}
	return false
}

// stepWallClock moves CLOCK_REALTIME by d.
func stepWallClock(t *testing.T, d time.Duration) {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_REALTIME, &ts); err != nil {
		t.Fatal(err)
	}
	ts = unix.NsecToTimespec(ts.Nano() + d.Nanoseconds())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		t.Fatalf("step the wall clock by %v: %v", d, err)
	}
}

// A wall-clock step (NTP, a bad RTC at boot, date -s) changes no age: ages
// come from the boot clock. With the clock stepped an hour ahead after
// closewait started, kill --from reads each socket's true age from its
// table (it read an hour more, so --older-than 1h would have destroyed
// sockets seconds old), and the events written after the step carry the
// new wall-clock time.
func TestWallClockJump(t *testing.T) {
	requireVM(t, "a wall-clock step")
	p, base := startWithMetrics(t, "--all")
	f := startFixture(t)
	ns, portA := strconv.FormatUint(f.netns, 10), strconv.Itoa(f.portA)
	waitAged(t, base, f, []string{"a1", "a2"}, time.Second)

	stepWallClock(t, time.Hour)
	stepped := time.Now()
	t.Cleanup(func() { stepWallClock(t, -time.Hour) })

	evs, stderr, code := kill(t, "--from", base, "--older-than", "1h", "--dry-run", "--netns", ns, "--port", portA)
	if got := f.byClient(t, evs, "not_destroyed"); code != 0 || len(got) != 0 {
		t.Errorf("kill --from --older-than 1h after an hour's step: exit %d, listed %v; want nothing listed, the sockets being seconds old:\n%s", code, evs, stderr)
	}
	evs, stderr, code = kill(t, "--from", base, "--older-than", "0s", "--dry-run", "--netns", ns, "--port", portA)
	got := f.byClient(t, evs, "not_destroyed")
	_, a1 := got["a1"]
	_, a2 := got["a2"]
	if code != 0 || !a1 || !a2 {
		t.Fatalf("kill --from --older-than 0s: exit %d, %v; want a1 and a2 listed:\n%s", code, evs, stderr)
	}
	for name, ev := range got {
		if age := time.Duration(*ev.AgeNS); !*ev.AgeKnown || age < time.Second || age >= time.Hour {
			t.Errorf("%s listed %v: want its age known, at least 1s and well short of the hour's step", name, ev)
		}
	}

	// A socket entering CLOSE-WAIT after the step is stamped with the
	// stepped clock (within the second the offset may be stale).
	f.young(t, "late")
	ev := p.next(eventTimeout, "close_wait of late", func(ev jsonEvent) bool {
		return ev.Event == "close_wait" && ev.NetNS == f.netns && ev.RemotePort == f.clients["late"]
	})
	if at := eventTime(t, ev); at.Sub(stepped) < -2*time.Second {
		t.Errorf("close_wait after the step at %v, %v before the stepped clock's time: its offset was not sampled again", at, stepped.Sub(at))
	}
}
