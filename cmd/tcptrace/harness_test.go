package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/loopback"
	"github.com/tcptrace/tcptrace/internal/schemacheck"
	"github.com/tcptrace/tcptrace/internal/testenv"
)

// The test binary doubles as the tcptrace binary: with this variable set it
// runs main, so the tests drive the real CLI in a separate process (also in
// a VM where no Go toolchain exists).
const runMainEnv = "TCPTRACE_TEST_RUN_MAIN"

// helperEnv makes the test binary act as a helper process instead.
const helperEnv = "TCPTRACE_TEST_HELPER"

// helperCgroupEnv names a cgroup v2 directory the helper joins first, and
// helperCommEnv the command name it takes.
const (
	helperCgroupEnv = "TCPTRACE_TEST_CGROUP"
	helperCommEnv   = "TCPTRACE_TEST_COMM"
)

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	if h := os.Getenv(helperEnv); h != "" {
		runHelper(h)
		return
	}
	os.Exit(m.Run())
}

// runHelper runs a helper process role and exits. Helpers print what the
// test needs, one line at a time, on stdout.
func runHelper(role string) {
	fail := func(err error) {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if name := os.Getenv(helperCommEnv); name != "" {
		if err := os.WriteFile("/proc/self/comm", []byte(name), 0); err != nil {
			fail(err)
		}
	}
	if dir := os.Getenv(helperCgroupEnv); dir != "" {
		// Join the cgroup before making sockets: a socket belongs to the
		// cgroup of the process that creates it.
		if err := os.WriteFile(dir+"/cgroup.procs", []byte(fmt.Sprint(os.Getpid())), 0); err != nil {
			fail(err)
		}
	}
	if role == "hostile" {
		// A leaking server with a name made to break parsers and terminals;
		// its arguments (os.Args) are hostile too.
		if err := os.WriteFile("/proc/self/comm", []byte(hostileComm), 0); err != nil {
			fail(err)
		}
		role = "leak"
	}
	switch role {
	case "old-kernel", "no-btf":
		// Make this process look, to itself, like a kernel tcptrace does not
		// support, then become tcptrace. The exec keeps what was set up on
		// this thread: the personality, the mount namespace.
		runtime.LockOSThread()
		if err := pretendUnsupported(role); err != nil {
			fail(err)
		}
		env := append(os.Environ(), runMainEnv+"=1")
		fail(syscall.Exec(os.Args[0], append([]string{"tcptrace"}, os.Args[1:]...), env))
	case "exit-holding":
		// Accept one connection, wait for the peer's FIN, then exit without
		// closing: the kernel closes the socket as the process exits.
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			fail(err)
		}
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
		c, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		_, _ = c.Read(make([]byte, 1)) // returns at EOF
		fmt.Println("eof")
		time.Sleep(200 * time.Millisecond)
		os.Exit(0)
	case "leak", "leak-fork", "leak-pass", "leak-late":
		// A server that never closes what it accepted. leak-fork shares the
		// descriptor with a child process; leak-pass hands it to a child
		// over a unix socket and closes its own copy; leak-late accepts
		// only when told, so the peer can close first.
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			fail(err)
		}
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
		if role == "leak-late" {
			if _, err := fmt.Scanln(); err != nil {
				fail(err)
			}
		}
		c, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		f, err := c.(*net.TCPConn).File()
		if err != nil {
			fail(err)
		}
		switch role {
		case "leak-fork":
			child := helperCommand("hold")
			child.ExtraFiles = []*os.File{f}
			if err := child.Start(); err != nil {
				fail(err)
			}
			fmt.Println("child", child.Process.Pid)
		case "leak-pass":
			pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
			if err != nil {
				fail(err)
			}
			child := helperCommand("receive")
			child.ExtraFiles = []*os.File{os.NewFile(uintptr(pair[1]), "unix")}
			if err := child.Start(); err != nil {
				fail(err)
			}
			if err := syscall.Sendmsg(pair[0], []byte{1}, syscall.UnixRights(int(f.Fd())), nil, 0); err != nil {
				fail(err)
			}
			// Wait until the child has it, then drop every copy of ours.
			if _, err := syscall.Read(pair[0], make([]byte, 1)); err != nil {
				fail(err)
			}
			f.Close()
			c.Close()
			fmt.Println("child", child.Process.Pid)
		default:
			fmt.Println("child 0")
		}
		holdForever()
	case "hold":
		// Inherited the socket as fd 3: keep it.
		holdForever()
	case "receive":
		// fd 3 is a unix socket carrying a descriptor.
		buf, oob := make([]byte, 1), make([]byte, syscall.CmsgSpace(4))
		_, oobn, _, _, err := syscall.Recvmsg(3, buf, oob, 0)
		if err != nil {
			fail(err)
		}
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			fail(fmt.Errorf("control messages %v: %v", msgs, err))
		}
		if _, err := syscall.ParseUnixRights(&msgs[0]); err != nil {
			fail(err)
		}
		if _, err := syscall.Write(3, []byte{1}); err != nil {
			fail(err)
		}
		holdForever()
	case "emfile-leak":
		emfileLeak(fail) // cost_test.go
	case "kill-fixture":
		killFixture(fail)
	case "leak-many":
		leakMany(fail)
	case "faults":
		faultsHelper(fail) // faults_test.go
	case "netns-leak":
		// Runs in a new network namespace: bring up lo, then leak the
		// server side of a connection made inside it.
		if err := loopback.Up(); err != nil {
			fail(err)
		}
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
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
		defer srv.Close() // never reached: held until killed
		fmt.Println(ln.Addr().(*net.TCPAddr).Port)
		// Close the client when told: the tracer must be running by then.
		if _, err := fmt.Scanln(); err != nil {
			fail(err)
		}
		cl.Close()
		fmt.Println("closed")
		holdForever()
	}
	fmt.Fprintf(os.Stderr, "unknown helper role %q\n", role)
	os.Exit(2)
}

// pretendUnsupported makes the calling thread see an unsupported kernel:
// for "old-kernel", uname reports a 2.6 release (the kernel's own UNAME26
// personality, as `setarch --uname-2.6` sets); for "no-btf", a private
// mount namespace hides /sys/kernel/btf under an empty tmpfs, which is what
// a kernel built without CONFIG_DEBUG_INFO_BTF looks like.
func pretendUnsupported(role string) error {
	if role == "old-kernel" {
		const uname26 = 0x0020000
		cur, _, errno := syscall.RawSyscall(syscall.SYS_PERSONALITY, 0xffffffff, 0, 0)
		if errno != 0 {
			return fmt.Errorf("personality: %w", errno)
		}
		if _, _, errno := syscall.RawSyscall(syscall.SYS_PERSONALITY, cur|uname26, 0, 0); errno != 0 {
			return fmt.Errorf("personality: %w", errno)
		}
		return nil
	}
	if err := syscall.Unshare(syscall.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	return syscall.Mount("tmpfs", "/sys/kernel/btf", "tmpfs", 0, "")
}

// holdForever keeps a helper alive, holding its sockets, until it is
// killed. Not select {}: in a static (CGO_ENABLED=0) test binary, as make
// vmtest builds, the runtime sees no goroutine that could wake it and
// aborts with a deadlock.
func holdForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// hostileComm is the command name the hostile helper gives itself.
const hostileComm = "\x1b[31m\"q\\\n\xff"

// helperCommand runs this test binary as a helper process.
func helperCommand(role string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), helperEnv+"="+role)
	cmd.Stderr = os.Stderr
	return cmd
}

// helper is a running helper process and its output lines.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
}

// startHelper starts a helper process, killed at cleanup.
func startHelper(t *testing.T, role string, cloneflags uintptr) *helper {
	t.Helper()
	return startHelperWith(t, role, cloneflags)
}

// startHelperArgs starts a helper process with arguments.
func startHelperArgs(t *testing.T, role string, args ...string) *helper {
	t.Helper()
	return startHelperWith(t, role, 0, args...)
}

func startHelperWith(t *testing.T, role string, cloneflags uintptr, args ...string) *helper {
	t.Helper()
	return runHelperCmd(t, role, helperCommand(role, args...), &syscall.SysProcAttr{Cloneflags: cloneflags})
}

// startHelperAs starts a helper process as another user: a copy of the
// test binary that the user may run.
func startHelperAs(t *testing.T, role string, uid uint32) *helper {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcptrace-helper")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "helper")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := helperCommand(role)
	cmd.Path, cmd.Args[0] = bin, bin
	return runHelperCmd(t, role, cmd, &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}})
}

func runHelperCmd(t *testing.T, role string, cmd *exec.Cmd, attr *syscall.SysProcAttr) *helper {
	t.Helper()
	// Its own process group, so the processes it starts die with it.
	attr.Setpgid = true
	cmd.SysProcAttr = attr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper %s: %v", role, err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	return &helper{cmd: cmd, stdin: stdin, lines: bufio.NewScanner(stdout)}
}

// line returns the helper's next output line.
func (h *helper) line(t *testing.T) string {
	t.Helper()
	if !h.lines.Scan() {
		t.Fatalf("helper %v ended without output", h.cmd.Args)
	}
	l := strings.TrimSpace(h.lines.Text())
	if strings.HasPrefix(l, "error") {
		t.Fatalf("helper %v: %s", h.cmd.Args, l)
	}
	return l
}

// jsonEvent is one output line as a consumer parses it.
type jsonEvent struct {
	Time          string            `json:"time"`
	Event         string            `json:"event"`
	Sock          string            `json:"sock"`
	Family        string            `json:"family"`
	LocalAddr     string            `json:"local_addr"`
	LocalPort     int               `json:"local_port"`
	RemoteAddr    string            `json:"remote_addr"`
	RemotePort    int               `json:"remote_port"`
	NetNS         uint64            `json:"netns"`
	OldState      string            `json:"old_state"`
	NewState      string            `json:"new_state"`
	PrevStateNS   *int64            `json:"prev_state_ns"`
	Task          *jsonTask         `json:"task"`
	AgeNS         *int64            `json:"age_ns"`
	AgeKnown      *bool             `json:"age_known"`
	ThresholdNS   *int64            `json:"threshold_ns"`
	FinToCloseNS  *int64            `json:"fin_to_close_ns"`
	WasStuck      *bool             `json:"was_stuck"`
	Closer        *jsonTask         `json:"closer"`
	Counts        map[string]uint64 `json:"counts"`
	Total         uint64            `json:"total"`
	CgroupID      uint64            `json:"cgroup_id"`
	ContainerID   string            `json:"container_id"`
	PodUID        string            `json:"pod_uid"`
	K8s           json.RawMessage   `json:"k8s"`
	Method        string            `json:"method"`
	Port          int               `json:"port"`
	InCloseWait   *uint64           `json:"in_close_wait"`
	Reason        string            `json:"reason"`
	Direction     string            `json:"direction"`
	OwnersOmitted int               `json:"owners_omitted"`
	// Why a socket stays in CLOSE-WAIT (stuck), or how it left.
	UnreadBytes  *uint64     `json:"unread_bytes"`
	ReadEOF      *bool       `json:"read_eof"`
	SinceSendNS  *int64      `json:"since_send_ns"`
	SinceRecvNS  *int64      `json:"since_recv_ns"`
	ClosedByExit *bool       `json:"closed_by_exit"`
	PeerReset    bool        `json:"peer_reset"`
	Cause        string      `json:"cause"`
	SocketInode  uint64      `json:"socket_inode"`
	OwnerSource  string      `json:"owner_source"`
	Owner        []jsonOwner `json:"owner"`
	Listener     *struct {
		LocalAddr string      `json:"local_addr"`
		LocalPort int         `json:"local_port"`
		Queue     int         `json:"queue"`
		Backlog   int         `json:"backlog"`
		Drops     uint64      `json:"drops"`
		Owner     []jsonOwner `json:"owner"`
	} `json:"listener"`
	Peer *struct {
		LocalAddr   string      `json:"local_addr"`
		LocalPort   int         `json:"local_port"`
		State       string      `json:"state"`
		SocketInode uint64      `json:"socket_inode"`
		Owner       []jsonOwner `json:"owner"`
	} `json:"peer"`
	// listen_drops
	Dropped    uint64 `json:"dropped"`
	IntervalNS int64  `json:"interval_ns"`
}

type jsonOwner struct {
	PID     int    `json:"pid"`
	Comm    string `json:"comm"`
	Exe     string `json:"exe"`
	Cmdline string `json:"cmdline"`
	UID     int    `json:"uid"`
	FD      int    `json:"fd"`
}

// ownerPIDs lists the pids of an event's owners.
func (e jsonEvent) ownerPIDs() []int {
	var pids []int
	for _, o := range e.Owner {
		pids = append(pids, o.PID)
	}
	return pids
}

type jsonTask struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
}

func (e jsonEvent) String() string {
	b, _ := json.Marshal(e)
	return string(b)
}

// tracerProc is a running `tcptrace` subprocess.
type tracerProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	events chan jsonEvent
	stderr *syncBuffer
	done   chan struct{} // closed when stdout is fully read
	seen   []jsonEvent   // everything received so far, in order
	gate   chan struct{} // stdout is read once this is closed
	ready  string        // the --ready-file
}

// tracerOpts varies how startTracerWith runs tcptrace.
type tracerOpts struct {
	// paused leaves stdout unread until resume: a consumer too slow for
	// the events, which fills the pipe and then tcptrace's queue.
	paused bool
	// wrap runs tcptrace under this command, e.g. setpriv.
	wrap []string
}

// resume starts reading the stdout of a paused tracer.
func (p *tracerProc) resume() {
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tcptraceCmd returns a command running this binary as tcptrace, under
// the wrap command if any.
func tcptraceCmd(wrap []string, args ...string) *exec.Cmd {
	argv := append(append(append([]string{}, wrap...), os.Args[0]), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	return cmd
}

// readyCmd is tcptraceCmd with a --ready-file, whose path it returns.
func readyCmd(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	ready := readyPath(t)
	return tcptraceCmd(nil, append(args, "--ready-file", ready)...), ready
}

// startTracer runs tcptrace with args (JSON output) and waits until it has
// attached. At cleanup it is interrupted and must exit 0.
func startTracer(t *testing.T, args ...string) *tracerProc {
	t.Helper()
	return startTracerWith(t, tracerOpts{}, args...)
}

func startTracerWith(t *testing.T, o tracerOpts, args ...string) *tracerProc {
	t.Helper()
	testenv.RequirePrivileged(t)
	ready := readyPath(t)
	p := &tracerProc{
		t:      t,
		cmd:    tcptraceCmd(o.wrap, append(args, "--output", "json", "--ready-file", ready)...),
		events: make(chan jsonEvent, 100000),
		stderr: &syncBuffer{},
		done:   make(chan struct{}),
		gate:   make(chan struct{}),
		ready:  ready,
	}
	if !o.paused {
		close(p.gate)
	}
	p.cmd.Stderr = p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start tcptrace: %v", err)
	}
	var readErr error
	go func() {
		defer close(p.done)
		defer close(p.events)
		<-p.gate
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if err := schemacheck.Line(t, line); err != nil {
				readErr = fmt.Errorf("line fails events/schema.json: %v\n%s", err, line)
				return
			}
			var ev jsonEvent
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				readErr = fmt.Errorf("line is not JSON: %v\n%s", err, line)
				return
			}
			p.events <- ev
		}
	}()
	t.Cleanup(func() {
		p.stop()
		if readErr != nil {
			t.Error(readErr)
		}
	})
	waitReady(t, ready, p.stderr, p.exited)
	return p
}

// readyPath names a --ready-file for one tcptrace run.
func readyPath(t *testing.T) string {
	t.Helper()
	f, err := os.CreateTemp("", "tcptrace-ready-")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	os.Remove(f.Name())
	t.Cleanup(func() { os.Remove(f.Name()) })
	return f.Name()
}

// waitReady waits until tcptrace has created its --ready-file: it is
// attached and has taken its start-up snapshot. It fails the test if
// tcptrace exits first (exited may be nil).
func waitReady(t *testing.T, path string, stderr *syncBuffer, exited func() bool) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) || (exited != nil && exited()) {
			t.Fatalf("tcptrace is not ready (no %s); stderr:\n%s", path, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *tracerProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop interrupts tcptrace and checks that it exits 0 promptly with its
// exit summary. Idempotent.
func (p *tracerProc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.t.Helper()
	p.resume()
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	waited := make(chan error, 1)
	go func() {
		<-p.done
		waited <- p.cmd.Wait()
	}()
	select {
	case err := <-waited:
		if err != nil {
			p.t.Errorf("tcptrace exited with %v after SIGINT; stderr:\n%s", err, p.stderr.String())
		}
	case <-time.After(eventTimeout):
		_ = p.cmd.Process.Kill()
		<-waited
		p.t.Errorf("tcptrace did not exit within %v of SIGINT; stderr:\n%s", eventTimeout, p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "msg=stopped") {
		p.t.Errorf("no exit summary on stderr:\n%s", p.stderr.String())
	}
	if _, err := os.Stat(p.ready); err == nil {
		p.t.Errorf("--ready-file %s left behind at exit", p.ready)
	}
}

// next returns the next event matching match, failing after timeout.
func (p *tracerProc) next(timeout time.Duration, what string, match func(jsonEvent) bool) jsonEvent {
	p.t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-p.events:
			if !ok {
				p.t.Fatalf("tcptrace output ended while waiting for %s; stderr:\n%s", what, p.stderr.String())
			}
			p.seen = append(p.seen, ev)
			if match(ev) {
				return ev
			}
		case <-timer.C:
			var last strings.Builder
			for _, ev := range p.seen[max(0, len(p.seen)-10):] {
				fmt.Fprintf(&last, "\n  %s", ev)
			}
			p.t.Fatalf("no %s within %v; received %d events, the last:%s\nstderr:\n%s", what, timeout, len(p.seen), last.String(), p.stderr.String())
		}
	}
}

// closeWaitOf waits for the close_wait event of c's server socket.
func (p *tracerProc) closeWaitOf(c conn) jsonEvent {
	p.t.Helper()
	return p.next(eventTimeout, "close_wait of the server socket", func(ev jsonEvent) bool {
		return ev.Event == "close_wait" && c.isServer(ev)
	})
}

// drain stops tcptrace and returns every event it wrote, including those
// already consumed by next.
func (p *tracerProc) drain() []jsonEvent {
	p.t.Helper()
	p.stop()
	for ev := range p.events {
		p.seen = append(p.seen, ev)
	}
	return p.seen
}

// conn is one loopback connection seen from both ends.
type conn struct {
	client, server *net.TCPConn
	port           int // the listener's port
	clientPort     int
}

// isServer matches events of the accepted (server-side) socket.
func (c conn) isServer(ev jsonEvent) bool {
	return ev.LocalPort == c.port && ev.RemotePort == c.clientPort
}

func (c conn) isClient(ev jsonEvent) bool {
	return ev.LocalPort == c.clientPort && ev.RemotePort == c.port
}

// listen opens a loopback listener on a free port.
func listen(t *testing.T, network, addr string) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("cannot listen on %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func listenerPort(ln *net.TCPListener) int { return ln.Addr().(*net.TCPAddr).Port }

// dial connects to ln and accepts the connection.
func dial(t *testing.T, ln *net.TCPListener) conn {
	t.Helper()
	c, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return conn{
		client:     c.(*net.TCPConn),
		server:     s,
		port:       listenerPort(ln),
		clientPort: c.LocalAddr().(*net.TCPAddr).Port,
	}
}

// ownNetNS returns the inode of this process's network namespace.
func ownNetNS(t *testing.T) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func portArg(ln *net.TCPListener) string { return fmt.Sprint(listenerPort(ln)) }

// attachModes runs f once per kernel hook, so the fallback is tested on
// kernels where the preferred hook works too.
func attachModes(t *testing.T, f func(t *testing.T, attach string)) {
	for _, a := range []string{"tp_btf", "tracepoint"} {
		t.Run(a, func(t *testing.T) { f(t, a) })
	}
}

// killFixture runs in a network namespace of its own: two ports, A and B;
// a1 and a2 leak in CLOSE-WAIT on A, a3 is ESTABLISHED on A, b1 leaks on
// B (each client shuts down and keeps its socket, in FIN_WAIT2). It prints
// "ports A B" and "clients a1=P a2=P a3=P b1=P", then obeys stdin:
// "young [NAME]" leaks NAME (a4 by default) on A and prints "NAME=P"; "probe" writes a byte to every
// server socket it holds, then reads it, and prints for each
// "name=eof|open|<error>": eof, still in CLOSE-WAIT; open, ESTABLISHED; a
// destroyed socket fails the write (its reads only say end of file, as
// the peer's FIN did).
func killFixture(fail func(error)) {
	if err := loopback.Up(); err != nil {
		fail(err)
	}
	type held struct {
		name     string
		srv, cl  net.Conn
		clientAt int
	}
	var all []held
	listen := func() net.Listener {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			fail(err)
		}
		return ln
	}
	lnA, lnB := listen(), listen()
	leak := func(name string, ln net.Listener, shut bool) held {
		cl, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			fail(err)
		}
		srv, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		if shut {
			if err := cl.(*net.TCPConn).CloseWrite(); err != nil {
				fail(err)
			}
		}
		h := held{name, srv, cl, cl.LocalAddr().(*net.TCPAddr).Port}
		all = append(all, h)
		return h
	}
	a1, a2, a3, b1 := leak("a1", lnA, true), leak("a2", lnA, true), leak("a3", lnA, false), leak("b1", lnB, true)
	fmt.Println("ports", lnA.Addr().(*net.TCPAddr).Port, lnB.Addr().(*net.TCPAddr).Port)
	fmt.Printf("clients a1=%d a2=%d a3=%d b1=%d\n", a1.clientAt, a2.clientAt, a3.clientAt, b1.clientAt)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, name, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "young":
			if name == "" {
				name = "a4"
			}
			fmt.Printf("%s=%d\n", name, leak(name, lnA, true).clientAt)
		case "probe":
			var out []string
			for _, h := range all {
				h.srv.SetDeadline(time.Now().Add(100 * time.Millisecond))
				_, err := h.srv.Write([]byte{1})
				if err == nil {
					_, err = h.srv.Read(make([]byte, 1))
				}
				res := "data"
				switch {
				case errors.Is(err, io.EOF):
					res = "eof"
				case errors.Is(err, os.ErrDeadlineExceeded):
					res = "open"
				case err != nil:
					res = strings.ReplaceAll(err.Error(), " ", "_")
					var errno syscall.Errno
					if errors.As(err, &errno) {
						res = unix.ErrnoName(errno)
					}
				}
				out = append(out, h.name+"="+res)
			}
			fmt.Println(strings.Join(out, " "))
		}
	}
	holdForever()
}

// leakMany accepts every connection and never closes one (a server with
// a leak in its close path). With TCPTRACE_TEST_NOFILE set it first sets
// its RLIMIT_NOFILE soft limit; with TCPTRACE_TEST_CLOSE_AFTER (a
// duration) it closes each connection that long after reading its EOF
// instead. It prints its port.
func leakMany(fail func(error)) {
	if v := os.Getenv("TCPTRACE_TEST_NOFILE"); v != "" {
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			fail(err)
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			fail(err)
		}
		lim.Cur = n
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			fail(err)
		}
	}
	var closeAfter time.Duration
	if v := os.Getenv("TCPTRACE_TEST_CLOSE_AFTER"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fail(err)
		}
		closeAfter = d
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	var held []net.Conn
	for {
		c, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		if closeAfter > 0 {
			go func() {
				io.Copy(io.Discard, c) // to the peer's FIN
				time.Sleep(closeAfter)
				c.Close()
				// When, for the test's bounds on the FIN-to-close latency.
				fmt.Printf("closed %d %d\n", c.RemoteAddr().(*net.TCPAddr).Port, time.Now().UnixNano())
			}()
			continue
		}
		held = append(held, c)
	}
}
