package owner

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// The test binary doubles as the helper process holding sockets: with
// helperEnv set, TestMain runs the helper named by the first argument
// instead of the tests. The helper speaks a line protocol: it prints
// "sock <ino> <fd>" per socket, "child <pid>", "sent", "ready", and takes
// commands on stdin; stdin EOF makes it exit.
const (
	helperEnv  = "TCPTRACE_OWNER_HELPER"
	helperArg  = "owner-helper"
	helperN    = "OWNER_HELPER_N"    // sockets to open at start (default 1)
	helperAddr = "OWNER_HELPER_ADDR" // IPv4 address to listen on (default 127.0.0.1)
	helperComm = "OWNER_HELPER_COMM" // comm to set at start
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		if err := helper(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func helper(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("no mode")
	}
	if c := os.Getenv(helperComm); c != "" {
		// Writing /proc/self/comm names the thread group leader, whichever
		// thread runs this; prctl(PR_SET_NAME) would name only the caller.
		if err := os.WriteFile("/proc/self/comm", []byte(c), 0); err != nil {
			return err
		}
	}
	switch args[0] {
	case "listen":
		return helperListen()
	case "hold":
		_, err := io.Copy(io.Discard, os.Stdin)
		return err
	case "recv":
		return helperRecv()
	}
	return fmt.Errorf("unknown mode %q", args[0])
}

func listenSock(addr [4]byte) (fd int, ino uint64, err error) {
	fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, 0, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: addr}); err != nil {
		return 0, 0, err
	}
	if err := syscall.Listen(fd, 1); err != nil {
		return 0, 0, err
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, 0, err
	}
	return fd, st.Ino, nil
}

func helperListen() error {
	n := 1
	if s := os.Getenv(helperN); s != "" {
		n, _ = strconv.Atoi(s)
	}
	addr := [4]byte{127, 0, 0, 1}
	if s := os.Getenv(helperAddr); s != "" {
		var a, b, c, d byte
		if _, err := fmt.Sscanf(s, "%d.%d.%d.%d", &a, &b, &c, &d); err != nil {
			return err
		}
		addr = [4]byte{a, b, c, d}
	}
	var fds []int
	open := func() error {
		fd, ino, err := listenSock(addr)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
		fmt.Printf("sock %d %d\n", ino, fd)
		return nil
	}
	for range n {
		if err := open(); err != nil {
			return err
		}
	}
	fmt.Println("ready")
	var kids []*exec.Cmd
	var keep []*os.File // an unreachable *os.File would close its fd
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "more":
			if err := open(); err != nil {
				return err
			}
		case "fork":
			// The grandchild inherits fds[0] as its fd 3 and exits when we
			// do: its stdin pipe closes, and Pdeathsig backs that up.
			sock := os.NewFile(uintptr(fds[0]), "sock")
			cmd := exec.Command(os.Args[0], helperArg, "hold")
			cmd.Env = os.Environ()
			cmd.ExtraFiles = []*os.File{sock}
			cmd.Stderr = os.Stderr
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if _, err := cmd.StdinPipe(); err != nil {
				return err
			}
			if err := cmd.Start(); err != nil {
				return err
			}
			kids = append(kids, cmd)
			keep = append(keep, sock)
			fmt.Printf("child %d\n", cmd.Process.Pid)
		case "send":
			// fd 3 is our end of a socketpair; pass fds[0] and close it.
			if err := syscall.Sendmsg(3, []byte("x"), syscall.UnixRights(fds[0]), nil, 0); err != nil {
				return err
			}
			syscall.Close(fds[0])
			fmt.Println("sent")
		}
	}
	for _, k := range kids {
		k.Process.Kill()
		k.Wait()
	}
	runtime.KeepAlive(keep)
	return in.Err()
}

func helperRecv() error {
	buf := make([]byte, 1)
	oob := make([]byte, syscall.CmsgSpace(4))
	_, oobn, _, _, err := syscall.Recvmsg(3, buf, oob, 0)
	if err != nil {
		return err
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return fmt.Errorf("control messages: %v", err)
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return fmt.Errorf("rights: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fds[0], &st); err != nil {
		return err
	}
	fmt.Printf("sock %d %d\n", st.Ino, fds[0])
	_, err = io.Copy(io.Discard, os.Stdin)
	return err
}

// child is a running helper process.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

type childOpts struct {
	env   []string
	extra []*os.File
	sys   *syscall.SysProcAttr
}

func startChild(t *testing.T, o childOpts, args ...string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, append([]string{helperArg}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Env = append(cmd.Env, o.env...)
	cmd.ExtraFiles = o.extra
	cmd.SysProcAttr = o.sys
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return c
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// next returns the fields of the child's next line, which must start with
// word.
func (c *child) next(t *testing.T, word string) []string {
	t.Helper()
	select {
	case line, ok := <-c.lines:
		if !ok {
			t.Fatalf("child %d: exited, wanted %q", c.pid(), word)
		}
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != word {
			t.Fatalf("child %d: got %q, wanted %q", c.pid(), line, word)
		}
		return f[1:]
	case <-time.After(waitTimeout):
		t.Fatalf("child %d: no %q within %v", c.pid(), word, waitTimeout)
	}
	return nil
}

// waitTimeout bounds a wait for a child's line: generous, for a loaded
// machine or qemu TCG; a passing run never waits for it.
const waitTimeout = 60 * time.Second

type sock struct {
	ino uint64
	fd  int
}

func (c *child) sock(t *testing.T) sock {
	t.Helper()
	f := c.next(t, "sock")
	ino, err1 := strconv.ParseUint(f[0], 10, 64)
	fd, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		t.Fatalf("bad sock line %q", f)
	}
	return sock{ino, fd}
}

// startHolding starts a child holding n listening sockets, ready.
func startHolding(t *testing.T, n int) (*child, []sock) {
	t.Helper()
	c := startChild(t, childOpts{env: []string{helperN + "=" + strconv.Itoa(n)}}, "listen")
	socks := make([]sock, 0, n)
	for range n {
		socks = append(socks, c.sock(t))
	}
	c.next(t, "ready")
	return c, socks
}

func (c *child) send(t *testing.T, cmd string) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
}

// netnsOf returns the inode of pid's network namespace, the number the
// kernel calls net->ns.inum. The Resolver no longer needs it: full scans
// cover every namespace.
func netnsOf(root string, pid int) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(pidPath(root, pid, "ns/net"), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func netnsSelf(t *testing.T) uint64 {
	t.Helper()
	ns, err := netnsOf("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

func testExe(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// pids lists the owners' pids, in order.
func pids(owners []Owner) []int {
	var out []int
	for _, o := range owners {
		out = append(out, o.PID)
	}
	return out
}

func TestResolveChild(t *testing.T) {
	c := startChild(t, childOpts{}, "listen", "arg-one")
	s := c.sock(t)
	c.next(t, "ready")

	r := NewResolver(Config{})
	owners, src := r.Resolve(s.ino, netnsSelf(t), nil)
	if src != SourceProc || len(owners) != 1 {
		t.Fatalf("got %v %+v, want one owner", src, owners)
	}
	o := owners[0]
	exe := testExe(t)
	want := events.Process{
		PID:     c.pid(),
		Comm:    o.Comm, // checked below
		Exe:     exe,
		Cmdline: exe + " " + helperArg + " listen arg-one",
		UID:     uint32(os.Getuid()),
	}
	if *o.Process != want || o.FD != s.fd {
		t.Errorf("got  %+v fd %d\nwant %+v fd %d", *o.Process, o.FD, want, s.fd)
	}
	// The kernel names the process after the executable's base name,
	// truncated to 15 bytes.
	base := exe[strings.LastIndexByte(exe, '/')+1:]
	if len(base) > 15 {
		base = base[:15]
	}
	if o.Comm != base {
		t.Errorf("comm %q, want %q", o.Comm, base)
	}

	// Once the child is gone the cache must not answer for it.
	c.stdin.Close()
	c.cmd.Process.Kill()
	c.cmd.Wait()
	if owners, src := r.Resolve(s.ino, netnsSelf(t), nil); src != SourceUnresolved || owners != nil {
		t.Errorf("after exit: got %v %+v", src, owners)
	}
	if owners, src := r.Resolve(0, 0, nil); src != SourceUnresolved || owners != nil {
		t.Errorf("inode 0: got %v %+v", src, owners)
	}
}

func TestResolveFork(t *testing.T) {
	c := startChild(t, childOpts{}, "listen")
	s := c.sock(t)
	c.next(t, "ready")
	netns := netnsSelf(t)

	// MaxAge ~0: every hit is re-confirmed by a full scan, so a holder that
	// appeared after the first Resolve is found.
	r := NewResolver(Config{MinRescan: time.Nanosecond, ScanShare: -1, MaxAge: time.Nanosecond})
	if owners, _ := r.Resolve(s.ino, netns, nil); !slices.Equal(pids(owners), []int{c.pid()}) {
		t.Fatalf("before fork: got %+v", owners)
	}

	c.send(t, "fork")
	gpid, err := strconv.Atoi(c.next(t, "child")[0])
	if err != nil {
		t.Fatal(err)
	}
	want := []int{c.pid(), gpid}
	slices.Sort(want)
	for _, r := range []*Resolver{r, NewResolver(Config{})} {
		owners, src := r.Resolve(s.ino, netns, nil)
		if src != SourceProc || !slices.Equal(pids(owners), want) {
			t.Fatalf("after fork: got %v %+v, want pids %v", src, owners, want)
		}
		for _, o := range owners {
			wantFD := s.fd
			if o.PID == gpid {
				wantFD = 3 // first of ExtraFiles
				if !strings.Contains(o.Cmdline, helperArg+" hold") {
					t.Errorf("grandchild cmdline %q", o.Cmdline)
				}
			}
			if o.FD != wantFD || o.Exe != testExe(t) {
				t.Errorf("owner %+v: want fd %d exe %s", o, wantFD, testExe(t))
			}
		}
	}
}

func TestResolveSCMRights(t *testing.T) {
	sp, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fa, fb := os.NewFile(uintptr(sp[0]), "a"), os.NewFile(uintptr(sp[1]), "b")
	a := startChild(t, childOpts{extra: []*os.File{fa}}, "listen")
	b := startChild(t, childOpts{extra: []*os.File{fb}}, "recv")
	fa.Close()
	fb.Close()
	s := a.sock(t)
	a.next(t, "ready")
	netns := netnsSelf(t)

	fast := NewResolver(Config{MinRescan: time.Nanosecond, ScanShare: -1})
	slow := NewResolver(Config{MinRescan: time.Hour})
	for _, r := range []*Resolver{fast, slow} {
		if owners, _ := r.Resolve(s.ino, netns, nil); !slices.Equal(pids(owners), []int{a.pid()}) {
			t.Fatalf("before send: got %+v, want pid %d", owners, a.pid())
		}
	}

	a.send(t, "send")
	a.next(t, "sent")
	got := b.sock(t)
	if got.ino != s.ino {
		t.Fatalf("received inode %d, want %d", got.ino, s.ino)
	}

	// A was cached as the holder; verification must drop it and a scan
	// find B.
	owners, src := fast.Resolve(s.ino, netns, nil)
	if src != SourceProc || len(owners) != 1 || owners[0].PID != b.pid() || owners[0].FD != got.fd {
		t.Errorf("after send: got %v %+v, want pid %d fd %d", src, owners, b.pid(), got.fd)
	}
	// Rate limited: no scan allowed, but the stale holder is still dropped,
	// and the caller is told when a scan may find the new one.
	if owners, src, wait := slow.ResolveWait(s.ino, netns, nil); src != SourceUnresolved || owners != nil || wait <= 0 || wait > time.Hour {
		t.Errorf("rate limited after send: got %v %+v wait %v, want unresolved, wait in (0, 1h]", src, owners, wait)
	}
}

func TestResolveNetns(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to create a network namespace (CLONE_NEWNET)")
	}
	// Probe first: containers often deny CLONE_NEWNET even to root.
	probe := exec.Command(testExe(t), "-test.run=^$")
	probe.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := probe.Run(); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}

	// No loopback address in a fresh namespace: listen on 0.0.0.0.
	c := startChild(t, childOpts{
		env: []string{helperAddr + "=0.0.0.0"},
		sys: &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET},
	}, "listen")
	s := c.sock(t)
	c.next(t, "ready")
	host := netnsSelf(t)
	ns, err := netnsOf("/proc", c.pid())
	if err != nil {
		t.Fatal(err)
	}
	if ns == host {
		t.Fatal("child shares the host network namespace")
	}

	hc, hs := startHolding(t, 1)

	// Full scans are node-wide: netns does not restrict them, even when it
	// names another namespace than the socket's. One scan, whichever
	// socket asked for it, answers for the sockets of both namespaces.
	r := NewResolver(Config{MinRescan: time.Hour})
	owners, src, wait := r.ResolveWait(s.ino, host, nil)
	if src != SourceProc || !slices.Equal(pids(owners), []int{c.pid()}) || owners[0].FD != s.fd || wait != 0 {
		t.Errorf("child netns socket, host netns passed: got %v %+v wait %v, want pid %d fd %d", src, owners, wait, c.pid(), s.fd)
	}
	owners, src, wait = r.ResolveWait(hs[0].ino, host, nil)
	if src != SourceProc || !slices.Equal(pids(owners), []int{hc.pid()}) || owners[0].FD != hs[0].fd || wait != 0 {
		t.Errorf("host netns socket: got %v %+v wait %v, want pid %d fd %d", src, owners, wait, hc.pid(), hs[0].fd)
	}
	if st := r.Stats(); st.FullScans != 1 || st.CacheMisses != 1 || st.CacheHits != 1 {
		t.Errorf("stats %+v, want 1 full scan, 1 miss, 1 hit", st)
	}
}

func TestResolveCache(t *testing.T) {
	const n = 200
	c, socks := startHolding(t, n)
	netns := netnsSelf(t)

	r := NewResolver(Config{MinRescan: time.Hour})
	for _, s := range socks {
		owners, src := r.Resolve(s.ino, netns, nil)
		if src != SourceProc || len(owners) != 1 || owners[0].PID != c.pid() || owners[0].FD != s.fd {
			t.Fatalf("sock %+v: got %v %+v", s, src, owners)
		}
	}
	st := r.Stats()
	if st.FullScans != 1 || st.CacheMisses != 1 || st.CacheHits != n-1 {
		t.Errorf("stats %+v, want 1 full scan, 1 miss, %d hits", st, n-1)
	}

	// A socket born after the scan is unknown, and the rate limit holds
	// back a second full scan (and a second read of the child's table).
	c.send(t, "more")
	s := c.sock(t)
	if owners, src, wait := r.ResolveWait(s.ino, netns, []int{c.pid()}); src != SourceUnresolved || wait <= 0 || wait > time.Hour {
		t.Errorf("new socket within MinRescan: got %v %+v wait %v, want unresolved, wait in (0, 1h]", src, owners, wait)
	}
	if st := r.Stats(); st.FullScans != 1 {
		t.Errorf("full scans %d, want 1", st.FullScans)
	}

	// A fresh resolver finds it through the hint alone.
	r2 := NewResolver(Config{MinRescan: time.Hour})
	owners, src := r2.Resolve(s.ino, netns, []int{c.pid()})
	if src != SourceProc || len(owners) != 1 || owners[0].PID != c.pid() || owners[0].FD != s.fd {
		t.Errorf("hinted: got %v %+v", src, owners)
	}
	if st := r2.Stats(); st.FullScans != 0 || st.PidsScanned != 1 {
		t.Errorf("hinted: stats %+v, want no full scan, 1 pid", st)
	}

	// Forget drops the entry: the next Resolve is a miss again.
	r2.Forget(s.ino)
	hits := r2.Stats().CacheHits
	r2.Resolve(s.ino, netns, nil)
	if r2.Stats().CacheHits != hits {
		t.Error("Forget left the entry cached")
	}
}

func TestResolveConcurrent(t *testing.T) {
	const n = 20
	c, socks := startHolding(t, n)
	netns := netnsSelf(t)

	r := NewResolver(Config{MinRescan: time.Nanosecond, ScanShare: -1, MaxAge: time.Nanosecond})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, s := range socks {
				if i%4 == g {
					r.Forget(s.ino)
				}
				if owners, _ := r.Resolve(s.ino, netns, nil); len(owners) != 1 || owners[0].PID != c.pid() {
					t.Errorf("sock %+v: got %+v", s, owners)
				}
			}
		}()
	}
	wg.Wait()
}

func TestResolveMaxEntries(t *testing.T) {
	const n = 10
	c, socks := startHolding(t, n)

	r := NewResolver(Config{MaxEntries: 3, MinRescan: time.Hour})
	if owners, _ := r.Resolve(socks[0].ino, netnsSelf(t), []int{c.pid()}); len(owners) != 1 {
		t.Fatalf("got %+v", owners)
	}
	r.mu.Lock()
	size := len(r.entries)
	r.mu.Unlock()
	if st := r.Stats(); size != 3 || st.Evictions == 0 {
		t.Errorf("cache holds %d entries after %d evictions, want 3", size, st.Evictions)
	}
}

func TestResolveCommCmdline(t *testing.T) {
	const comm = "a) b (c"
	long := strings.Repeat("x", 1000)
	c := startChild(t, childOpts{env: []string{helperComm + "=" + comm}}, "listen", long)
	s := c.sock(t)
	c.next(t, "ready")

	r := NewResolver(Config{})
	owners, src := r.Resolve(s.ino, netnsSelf(t), []int{c.pid()})
	if src != SourceProc || len(owners) != 1 {
		t.Fatalf("got %v %+v", src, owners)
	}
	o := owners[0]
	if o.Comm != comm {
		t.Errorf("comm %q, want %q", o.Comm, comm)
	}
	want := (testExe(t) + " " + helperArg + " listen " + long)[:MaxCmdline]
	if o.Cmdline != want {
		t.Errorf("cmdline %q (%d bytes), want %q", o.Cmdline, len(o.Cmdline), want)
	}
}

func TestSourceString(t *testing.T) {
	for s, want := range map[Source]string{SourceProc: "proc", SourceUnresolved: "unresolved", 7: "Source(7)"} {
		if s.String() != want {
			t.Errorf("%d: %q, want %q", s, s.String(), want)
		}
	}
}

// BenchmarkFullScan measures one full scan of this machine's /proc.
func BenchmarkFullScan(b *testing.B) {
	var st Stats
	for range b.N {
		r := NewResolver(Config{})
		r.Resolve(1, 0, nil) // no socket has inode 1: always a full scan
		st = r.Stats()
	}
	b.ReportMetric(float64(st.PidsScanned), "pids/op")
	b.ReportMetric(float64(st.FDsRead), "fds/op")
}

// Cached never scans: a miss stays a miss, a hit is re-verified.
func TestCachedDoesNotScan(t *testing.T) {
	c := startChild(t, childOpts{}, "listen")
	sk := c.sock(t)
	r := NewResolver(Config{})
	if got, src := r.Cached(sk.ino); src != SourceUnresolved || len(got) != 0 {
		t.Fatalf("Cached before any scan = %v, %v", got, src)
	}
	if st := r.Stats(); st.FullScans != 0 || st.PidsScanned != 0 {
		t.Fatalf("Cached scanned: %+v", st)
	}
	if got, src := r.Resolve(sk.ino, 0, nil); src != SourceProc || len(got) != 1 {
		t.Fatalf("Resolve = %v, %v", got, src)
	}
	if got, src := r.Cached(sk.ino); src != SourceProc || len(got) != 1 || got[0].PID != c.pid() {
		t.Fatalf("Cached after Resolve = %v, %v; want pid %d", got, src, c.pid())
	}
}

// The next full scan waits ScanShare times as long as the last one took,
// whatever MinRescan says: scanning cost stays a bounded share of a CPU.
func TestScanShareThrottlesFullScans(t *testing.T) {
	c := startChild(t, childOpts{}, "listen")
	sk := c.sock(t)
	r := NewResolver(Config{MinRescan: time.Nanosecond, ScanShare: 1_000_000})
	r.Resolve(1, 0, nil) // unknown inode: one full scan, which takes > 0
	// Too soon after it: unresolved, and a wait of at least the 1ms floor.
	if got, src, wait := r.ResolveWait(2, 0, nil); src != SourceUnresolved || got != nil || wait < time.Millisecond {
		t.Errorf("inode 2 right after a scan: %v %v wait %v, want unresolved, wait >= 1ms", got, src, wait)
	}
	if in := r.ScanAllowedIn(); in <= 0 {
		t.Errorf("ScanAllowedIn = %v right after a scan, want > 0", in)
	}
	if got, src, wait := r.ResolveWait(sk.ino, 0, nil); src != SourceProc || len(got) != 1 || wait != 0 {
		t.Errorf("socket seen by the first scan: %v %v wait %v", got, src, wait)
	}
	if st := r.Stats(); st.FullScans != 1 {
		t.Errorf("%d full scans, want 1: the share bound did not hold", st.FullScans)
	}
}

// The scan budget is for the node: a miss in another namespace right after
// a scan waits for the budget too (that scan covered its namespace).
func TestScanShareIsPerNode(t *testing.T) {
	r := NewResolver(Config{MinRescan: time.Nanosecond, ScanShare: 1_000_000})
	r.Resolve(1, 4026531111, nil) // no socket has inode 1: a full scan, > 0
	if _, src, wait := r.ResolveWait(2, 4026532222, nil); src != SourceUnresolved || wait <= 0 {
		t.Errorf("another namespace right after: %v wait %v, want unresolved, wait > 0", src, wait)
	}
	if st := r.Stats(); st.FullScans != 1 {
		t.Errorf("%d full scans back to back, want 1", st.FullScans)
	}
}

// Eviction keeps the most recently recorded sockets, at most MaxEntries of
// them, and never the one being resolved.
func TestEvictOldestFirst(t *testing.T) {
	r := NewResolver(Config{MaxEntries: 64})
	r.pinned = 1
	for ino := uint64(1); ino <= 1000; ino++ {
		r.record(ino, 100, int(ino), 0)
		if len(r.entries) > 64 {
			t.Fatalf("%d entries after recording %d, want at most 64", len(r.entries), ino)
		}
	}
	if _, ok := r.entries[1]; !ok {
		t.Error("the pinned socket was evicted")
	}
	for ino := uint64(1000); ino > 1000-56; ino-- {
		if _, ok := r.entries[ino]; !ok {
			t.Fatalf("socket %d, among the 56 newest, was evicted", ino)
		}
	}
	if r.stats.Evictions != 1000-uint64(len(r.entries)) {
		t.Errorf("%d evictions counted, %d entries left of 1000", r.stats.Evictions, len(r.entries))
	}
}

// fakeProc is a /proc tree in a temporary directory, for processes a test
// cannot start: many network namespaces without root, for one. Its fd
// links read like the kernel's, "socket:[<ino>]"; ns/net is a plain file,
// hard-linked between the processes of one namespace, so that its inode
// stands for the namespace's as the real one's does.
type fakeProc struct {
	t    *testing.T
	root string
}

func newFakeProc(t *testing.T) *fakeProc {
	t.Helper()
	f := &fakeProc{t, t.TempDir()}
	// Non-pid entries, which scans must pass over.
	for _, dir := range []string{"sys", "net", "self"} {
		f.mkdir(dir)
	}
	return f
}

func (f *fakeProc) mkdir(path string) {
	f.t.Helper()
	if err := os.MkdirAll(f.root+"/"+path, 0o755); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeProc) write(path, content string) {
	f.t.Helper()
	if err := os.WriteFile(f.root+"/"+path, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// addProc adds process pid, named comm, run by uid 1000, in the network
// namespace named ns: processes given the same name share it.
func (f *fakeProc) addProc(pid int, comm, ns string) {
	f.t.Helper()
	p := strconv.Itoa(pid)
	f.mkdir(p + "/fd")
	f.mkdir(p + "/ns")
	f.write(p+"/stat", statLine(comm, strconv.Itoa(1000+pid)))
	f.write(p+"/comm", comm+"\n")
	f.write(p+"/status", "Name:\t"+comm+"\nTgid:\t"+p+"\nPid:\t"+p+"\nUid:\t1000\t1000\t1000\t1000\n")
	f.write(p+"/cmdline", "/usr/bin/"+comm+"\x00--pod\x00"+ns+"\x00")
	if err := os.Symlink("/usr/bin/"+comm, f.root+"/"+p+"/exe"); err != nil {
		f.t.Fatal(err)
	}
	nsFile := f.root + "/netns-" + ns
	if _, err := os.Stat(nsFile); err != nil {
		f.write("netns-"+ns, "")
	}
	if err := os.Link(nsFile, f.root+"/"+p+"/ns/net"); err != nil {
		f.t.Fatal(err)
	}
}

// addSock gives pid socket ino on fd.
func (f *fakeProc) addSock(pid, fd int, ino uint64) {
	f.t.Helper()
	link := fmt.Sprintf("socket:[%d]", ino)
	if err := os.Symlink(link, pidPath(f.root, pid, "fd/"+strconv.Itoa(fd))); err != nil {
		f.t.Fatal(err)
	}
}

// closeFD closes fd of pid.
func (f *fakeProc) closeFD(pid, fd int) {
	f.t.Helper()
	if err := os.Remove(pidPath(f.root, pid, "fd/"+strconv.Itoa(fd))); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeProc) netns(pid int) uint64 {
	f.t.Helper()
	ns, err := netnsOf(f.root, pid)
	if err != nil {
		f.t.Fatal(err)
	}
	return ns
}

// threeNamespaces is a node with a socket leak in each of three pods, one
// network namespace each: a in ns "a"; b1 and b2 in "b", sharing socket
// 2001 (forked or passed); c in "c".
func threeNamespaces(t *testing.T) *fakeProc {
	f := newFakeProc(t)
	f.addProc(101, "app-a", "a")
	f.addSock(101, 3, 1001)
	f.addProc(201, "app-b", "b")
	f.addSock(201, 4, 2001)
	f.addSock(201, 7, 2002)
	f.addProc(202, "sidecar-b", "b")
	f.addSock(202, 5, 2001)
	f.addProc(301, "app-c", "c")
	f.addSock(301, 3, 3001)
	f.addSock(301, 9, 3001) // dup: the lowest fd is reported
	f.addProc(302, "idle-c", "c")
	if a, b, c := f.netns(101), f.netns(201), f.netns(301); a == b || b == c || a == c || f.netns(202) != b {
		t.Fatalf("fake namespaces: a %d, b %d, c %d, b2 %d", a, b, c, f.netns(202))
	}
	return f
}

// ownerIs checks one Resolve answer against the holders wanted, as
// (pid, fd) pairs, and the details threeNamespaces gives them.
func ownerIs(t *testing.T, what string, owners []Owner, src Source, wait time.Duration, want ...[2]int) {
	t.Helper()
	if src != SourceProc || wait != 0 || len(owners) != len(want) {
		t.Errorf("%s: got %v %+v wait %v, want %d owners, wait 0", what, src, owners, wait, len(want))
		return
	}
	for i, o := range owners {
		if o.PID != want[i][0] || o.FD != want[i][1] {
			t.Errorf("%s: owner %d is pid %d fd %d, want pid %d fd %d", what, i, o.PID, o.FD, want[i][0], want[i][1])
		}
		if o.Exe != "/usr/bin/"+o.Comm || !strings.HasPrefix(o.Cmdline, o.Exe+" --pod ") || o.UID != 1000 {
			t.Errorf("%s: owner %d details %+v", what, i, *o.Process)
		}
	}
}

// One full scan, asked for by a socket of namespace a, records the sockets
// of every namespace: those of b and c are then answered from the cache,
// with no second scan. Scoping scans to the asking namespace left b and c
// to later budget windows, and unresolved meanwhile.
func TestFullScanCoversAllNamespaces(t *testing.T) {
	f := threeNamespaces(t)
	r := NewResolver(Config{ProcRoot: f.root, MinRescan: time.Hour})

	owners, src, wait := r.ResolveWait(1001, f.netns(101), nil)
	ownerIs(t, "ns a", owners, src, wait, [2]int{101, 3})
	if st := r.Stats(); st.FullScans != 1 || st.PidsScanned != 5 {
		t.Fatalf("after ns a: stats %+v, want 1 full scan of all 5 pids", st)
	}
	if in := r.ScanAllowedIn(); in <= 0 || in > time.Hour {
		t.Errorf("ScanAllowedIn = %v after a scan, want in (0, 1h]", in)
	}

	owners, src, wait = r.ResolveWait(2001, f.netns(201), nil)
	ownerIs(t, "ns b, shared", owners, src, wait, [2]int{201, 4}, [2]int{202, 5})
	owners, src, wait = r.ResolveWait(2002, f.netns(201), nil)
	ownerIs(t, "ns b", owners, src, wait, [2]int{201, 7})
	owners, src, wait = r.ResolveWait(3001, f.netns(301), nil)
	ownerIs(t, "ns c", owners, src, wait, [2]int{301, 3})
	// The namespace a caller passes does not matter either.
	owners, src = r.Resolve(3001, 0, nil)
	ownerIs(t, "ns c, netns 0", owners, src, 0, [2]int{301, 3})

	if st := r.Stats(); st.FullScans != 1 || st.CacheMisses != 1 || st.CacheHits != 4 {
		t.Errorf("stats %+v, want 1 full scan, 1 miss, 4 hits", st)
	}
}

// clock is a Resolver's time, moved by the test alone: how long a loaded
// machine takes between two calls must not decide whether a rate limit
// still holds.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeClock sets r's clock to one the test moves, from r's epoch.
func fakeClock(r *Resolver) *clock {
	c := &clock{t: r.epoch}
	r.now = c.now
	return c
}

// Within MinRescan a miss cannot scan: ResolveWait says so with a wait, and
// a call after that wait scans and resolves. A miss is also what a socket
// whose cached holders all let go of it is.
func TestResolveWaitMinRescan(t *testing.T) {
	const minRescan = 100 * time.Millisecond
	f := threeNamespaces(t)
	r := NewResolver(Config{ProcRoot: f.root, MinRescan: minRescan, ScanShare: -1})
	clk := fakeClock(r)
	owners, src, wait := r.ResolveWait(1001, f.netns(101), nil)
	ownerIs(t, "first", owners, src, wait, [2]int{101, 3})

	// A socket born after the scan, in another namespace.
	f.addSock(201, 11, 2011)
	owners, src, wait = r.ResolveWait(2011, f.netns(201), nil)
	if src != SourceUnresolved || owners != nil || wait <= 0 || wait > minRescan {
		t.Fatalf("new socket within MinRescan: got %v %+v wait %v, want unresolved, wait in (0, %v]", src, owners, wait, minRescan)
	}
	if in := r.ScanAllowedIn(); in <= 0 || in > wait {
		t.Errorf("ScanAllowedIn = %v, want in (0, %v]", in, wait)
	}
	// Found answers are final, whatever the budget: no wait.
	owners, src, wait2 := r.ResolveWait(2001, f.netns(201), nil)
	ownerIs(t, "cached, within MinRescan", owners, src, wait2, [2]int{201, 4}, [2]int{202, 5})
	if st := r.Stats(); st.FullScans != 1 {
		t.Fatalf("%d full scans within MinRescan, want 1", st.FullScans)
	}

	clk.advance(wait)
	if in := r.ScanAllowedIn(); in != 0 {
		t.Errorf("ScanAllowedIn = %v after the wait, want 0", in)
	}
	owners, src, wait = r.ResolveWait(2011, f.netns(201), nil)
	ownerIs(t, "after the wait", owners, src, wait, [2]int{201, 11})
	if st := r.Stats(); st.FullScans != 2 {
		t.Errorf("%d full scans, want 2", st.FullScans)
	}

	// Socket 1001 moves from 101 to 302 (SCM_RIGHTS): verification drops
	// 101, which may not be rescanned yet, and no holder remains.
	f.closeFD(101, 3)
	f.addSock(302, 6, 1001)
	owners, src, wait = r.ResolveWait(1001, f.netns(101), nil)
	if src != SourceUnresolved || owners != nil || wait <= 0 || wait > minRescan {
		t.Fatalf("holder gone within MinRescan: got %v %+v wait %v, want unresolved, wait in (0, %v]", src, owners, wait, minRescan)
	}
	clk.advance(wait)
	owners, src, wait = r.ResolveWait(1001, f.netns(101), nil)
	ownerIs(t, "moved, after the wait", owners, src, wait, [2]int{302, 6})

	// A scan that ran and did not find the socket is final for now too.
	clk.advance(r.ScanAllowedIn())
	if owners, src, wait := r.ResolveWait(999, 0, nil); src != SourceUnresolved || owners != nil || wait != 0 {
		t.Errorf("unknown socket after a scan: got %v %+v wait %v, want unresolved, wait 0", src, owners, wait)
	}
	if st := r.Stats(); st.FullScans != 4 {
		t.Errorf("%d full scans, want 4", st.FullScans)
	}
	if owners, src, wait := r.ResolveWait(0, 0, nil); src != SourceUnresolved || owners != nil || wait != 0 {
		t.Errorf("inode 0: got %v %+v wait %v", src, owners, wait)
	}
}

// The ScanShare budget delays a scan beyond MinRescan; the wait covers it.
func TestResolveWaitScanShare(t *testing.T) {
	const share, cost = 10, 20 * time.Millisecond
	f := threeNamespaces(t)
	r := NewResolver(Config{ProcRoot: f.root, MinRescan: time.Nanosecond, ScanShare: share})
	clk := fakeClock(r)
	owners, src, wait := r.ResolveWait(3001, f.netns(301), nil)
	ownerIs(t, "first", owners, src, wait, [2]int{301, 3})
	// Pretend the scan took cost, which the fake tree is too small for:
	// the budget is then share*cost from its start.
	r.mu.Lock()
	r.lastCost = cost
	r.mu.Unlock()

	f.addSock(101, 12, 1012)
	owners, src, wait = r.ResolveWait(1012, f.netns(101), nil)
	if src != SourceUnresolved || owners != nil || wait < time.Millisecond || wait > share*cost {
		t.Fatalf("within the budget: got %v %+v wait %v, want unresolved, wait in [1ms, %v]", src, owners, wait, share*cost)
	}
	owners, src, wait2 := r.ResolveWait(2002, f.netns(201), nil)
	ownerIs(t, "cached, within the budget", owners, src, wait2, [2]int{201, 7})

	clk.advance(wait)
	owners, src, wait = r.ResolveWait(1012, f.netns(101), nil)
	ownerIs(t, "after the wait", owners, src, wait, [2]int{101, 12})
	if st := r.Stats(); st.FullScans != 2 {
		t.Errorf("%d full scans, want 2", st.FullScans)
	}
}
