package tracer_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/tracer"
)

// bpfObjects returns how many eBPF object descriptors (programs, maps,
// links) this process holds, and the ids of the programs among them. Other
// processes' tracers, such as concurrently running tests, do not count.
func bpfObjects(t *testing.T) (fds int, progs []ebpf.ProgramID) {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || !strings.HasPrefix(target, "anon_inode:bpf") {
			continue
		}
		fds++
		if target != "anon_inode:bpf-prog" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(info), "\n") {
			if id, ok := strings.CutPrefix(line, "prog_id:"); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(id))
				progs = append(progs, ebpf.ProgramID(n))
			}
		}
	}
	return fds, progs
}

// waitTimeout bounds every wait for a condition: the condition ends it, so
// it is no margin a verdict depends on; generous, for qemu's emulation on a
// loaded machine.
const waitTimeout = 60 * time.Second

// gone waits for the kernel to free a program: it does so after an RCU
// grace period, not at close.
func gone(id ebpf.ProgramID) bool {
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			return true
		}
		p.Close()
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func TestLifecycle(t *testing.T) {
	testenv.RequirePrivileged(t)
	before, _ := bpfObjects(t)
	for _, attach := range []tracer.Attach{tracer.AttachTPBTF, tracer.AttachTracepoint} {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(ln.Addr().(*net.TCPAddr).Port)
		tr, err := tracer.New(tracer.Config{Mode: tracer.ModeTrace, Ports: []uint16{port}, Attach: attach})
		if err != nil {
			t.Fatalf("%s: %v", attach, err)
		}
		if !strings.HasPrefix(tr.AttachPoint(), string(attach)) {
			t.Errorf("attach point %q, asked for %s", tr.AttachPoint(), attach)
		}
		fds, progs := bpfObjects(t)
		if fds <= before || len(progs) != 1 {
			t.Fatalf("%s: %d eBPF descriptors (%d before) and programs %v after New, want one program", attach, fds, before, progs)
		}
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		ln.Close()

		// Listener CLOSE->LISTEN predates the tracer; the rest is traced:
		// client 2+ transitions, child 2, listener LISTEN->CLOSE. Some
		// follow in softirq context: wait for five, then Stop delivers
		// what was produced before it and closes Events.
		var got []events.Event
		timeout := time.After(waitTimeout)
		stopped := false
	drain:
		for {
			if len(got) >= 5 && !stopped {
				tr.Stop()
				stopped = true
			}
			select {
			case batch, ok := <-tr.Events():
				if !ok {
					break drain
				}
				got = append(got, batch...)
				tr.Recycle(batch)
			case <-timeout:
				t.Fatalf("%s: %d events and Events not closed (stopped %v) after %v", attach, len(got), stopped, waitTimeout)
			}
		}
		if err := tr.Err(); err != nil {
			t.Errorf("%s: Err after Stop = %v", attach, err)
		}
		if len(got) < 5 {
			t.Errorf("%s: %d events after Stop, want the connection's transitions", attach, len(got))
		}
		// Recursion misses count the program's skipped runs for every socket
		// on the host, busy with other tests; the rest are this tracer's.
		lost, err := tr.Lost()
		lost[events.LostRecursion] = 0
		if err != nil || lost.Total() != 0 {
			t.Errorf("%s: Lost() = %v, %v; want no loss", attach, lost, err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("%s: Close: %v", attach, err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("%s: second Close: %v", attach, err)
		}
		if after, _ := bpfObjects(t); after != before {
			t.Errorf("%s: %d eBPF descriptors after Close, want %d as before New", attach, after, before)
		}
		if !gone(progs[0]) {
			t.Errorf("%s: program %d still loaded %v after Close", attach, progs[0], waitTimeout)
		}
	}
}

// Close without Stop, while events may still be queued, frees everything.
func TestCloseWithoutStop(t *testing.T) {
	testenv.RequirePrivileged(t)
	before, _ := bpfObjects(t)
	tr, err := tracer.New(tracer.Config{Mode: tracer.ModeCloseWait})
	if err != nil {
		t.Fatal(err)
	}
	_, progs := bpfObjects(t)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	for range tr.Events() {
	}
	// closewait mode: the state hook, the snapshot iterator, the
	// tcp_destroy_sock program and, where the kernel takes it, the table
	// scan iterator.
	want := 2
	if tr.FollowsResets() {
		want++
	} else {
		t.Log("no tcp_destroy_sock program: resets of held sockets count as aborts")
	}
	if tr.CountsAcceptFailures() {
		want += 4 // accept and accept4, entry and exit
	} else {
		t.Log("no accept programs: accept() failures are not counted")
	}
	if scan, why := testenv.CanLoadIter(t, "bpf_map_elem"); scan {
		want++
	} else {
		t.Logf("the kernel refuses map element iterators (%v): the table is read whole, without the scan program", why)
	}
	if len(progs) != want {
		t.Errorf("programs %v loaded in closewait mode (in-kernel scan %v), want %d", progs, tr.ScansInKernel(), want)
	}
	if after, _ := bpfObjects(t); after != before {
		t.Errorf("after Close: %d eBPF descriptors, want %d", after, before)
	}
	for _, id := range progs {
		if !gone(id) {
			t.Errorf("program %d still loaded %v after Close", id, waitTimeout)
		}
	}
}

func TestConfigRejected(t *testing.T) {
	for name, cfg := range map[string]tracer.Config{
		"attach":    {Attach: "kprobe"},
		"port 0":    {Ports: []uint16{0}},
		"ring size": {RingBufBytes: 3 << 12},
		"mode":      {Mode: 9},
	} {
		tr, err := tracer.New(cfg)
		if err == nil {
			tr.Close()
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
		if errors.Is(err, tracer.ErrPrivilege) {
			t.Errorf("%s: config checked after privileges: %v", name, err)
		}
	}
}

// The hook chosen with AttachAuto is the best the running kernel offers:
// tp_btf, with socket cookies where a tp_btf program may read them (Linux
// 5.12), the in-kernel table scan where map element iterators load, and
// socket listing where TCP iterators do (5.9). Each is compared with what
// a probe of the tests' own finds, not with a kernel version. The choice
// is printed on a VMTEST_ATTACH line for the kernel matrix (make vmtest).
func TestAutoAttachChoice(t *testing.T) {
	testenv.RequirePrivileged(t)
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(uts.Release[:])

	tr, err := tracer.New(tracer.Config{Mode: tracer.ModeCloseWait})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	fmt.Printf("VMTEST_ATTACH kernel=%s point=%s cookie=%v listing=%v scan=%v resets=%v accept=%v\n", release, tr.AttachPoint(), tr.SocketCookie(), tr.CanList(),
		tr.ScansInKernel(), tr.FollowsResets(), tr.CountsAcceptFailures())
	if want := "tp_btf/inet_sock_set_state"; tr.AttachPoint() != want {
		t.Errorf("Linux %s: auto chose %s, want %s", release, tr.AttachPoint(), want)
	}
	for _, c := range []struct {
		what string
		got  bool
		want func() (bool, error)
	}{
		{"socket cookie", tr.SocketCookie(), func() (bool, error) { return testenv.CanReadSocketCookie(t) }},
		{"in-kernel table scan", tr.ScansInKernel(), func() (bool, error) { return testenv.CanLoadIter(t, "bpf_map_elem") }},
		{"socket listing", tr.CanList(), func() (bool, error) { return testenv.CanLoadIter(t, "tcp") }},
		{"following resets (tcp_destroy_sock)", tr.FollowsResets(), func() (bool, error) { return testenv.CanAttachRawTP(t, "tcp_destroy_sock") }},
		{"accept failures (syscalls:sys_exit_accept4)", tr.CountsAcceptFailures(), func() (bool, error) {
			return testenv.CanAttachTracepoint(t, "syscalls", "sys_exit_accept4")
		}},
	} {
		want, why := c.want()
		if !want {
			t.Logf("Linux %s: no %s here: %v", release, c.what, why)
		}
		if c.got != want {
			t.Errorf("Linux %s: %s %v, want %v as the kernel offers", release, c.what, c.got, want)
		}
	}
}

// listenLoopback listens on a free loopback port, closed when the test ends.
func listenLoopback(t *testing.T) (net.Listener, uint16) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, uint16(ln.Addr().(*net.TCPAddr).Port)
}

// irqWork returns the host's count of IRQ-work interrupts, summed over CPUs:
// each ring-buffer wake-up of the reader is one.
func irqWork(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/interrupts")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "IWI:")
		if !ok {
			continue
		}
		var sum uint64
		for _, f := range strings.Fields(rest) {
			n, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				break // the description after the per-CPU counts
			}
			sum += n
		}
		return sum
	}
	t.Skip("no IWI line in /proc/interrupts on this architecture")
	return 0
}

// A reader that falls behind is woken once in a while, not by every event:
// a wake-up costs the producing CPU an interrupt, which would make a busy
// host pay most when the reader is already late. IRQ work is counted for
// the whole host, where other tracers (other tests' among them) raise
// some too: a round with that much noise is run again, up to three times;
// a wake-up per event would exceed the bound in every round.
func TestLaggingReaderNotWokenPerEvent(t *testing.T) {
	testenv.RequirePrivileged(t)
	ln, port := listenLoopback(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for round := 1; ; round++ {
		wakeups, lagging := laggingRound(t, ln, port)
		if wakeups <= uint64(lagging)/4 {
			return
		}
		if round == 3 {
			t.Fatalf("%d IRQ-work interrupts while %d events waited behind a lagging reader, want far fewer (3 rounds)", wakeups, lagging)
		}
		t.Logf("round %d: %d IRQ-work interrupts for %d lagging events: again", round, wakeups, lagging)
	}
}

// laggingRound makes a tracer's reader lag and returns the host's IRQ-work
// interrupts meanwhile and how many events came past the wake-up mark.
func laggingRound(t *testing.T, ln net.Listener, port uint16) (uint64, int) {
	const ring = 256 << 10
	tr, err := tracer.New(tracer.Config{
		Mode: tracer.ModeTrace, Ports: []uint16{port},
		RingBufBytes: ring, QueueLen: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	// Nothing consumes Events: the reader stops after a batch or two and
	// the ring fills past the quarter that asks for a wake-up.
	before := irqWork(t)
	for range 200 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	time.Sleep(200 * time.Millisecond) // queued IRQ work runs (an undercount could only pass wrongly)
	wakeups := irqWork(t) - before

	tr.Stop()
	n := 0
	for batch := range tr.Events() {
		n += len(batch)
		tr.Recycle(batch)
	}
	lost, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	// Past a quarter of the ring, every event asked the old code for a
	// wake-up.
	const recordBytes = 120
	lagging := n - ring/4/recordBytes - 2*64
	if lagging < 500 {
		t.Fatalf("only %d events (lost %v): the reader never lagged by a quarter of the ring", n, lost)
	}
	t.Logf("%d events, %d past the wake-up mark, %d IRQ-work interrupts, lost %v", n, lagging, wakeups, lost)
	return wakeups, lagging
}

// In trace mode MaxTracked bounds the table of state timestamps: past it,
// entries are evicted and counted as table_full, and a tracked socket still
// gets its time in the previous state.
func TestTraceStateTableBounded(t *testing.T) {
	testenv.RequirePrivileged(t)
	ln, port := listenLoopback(t)
	tr, err := tracer.New(tracer.Config{Mode: tracer.ModeTrace, Ports: []uint16{port}, MaxTracked: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	// Three connections held open: six sockets born, each one evicting
	// another's timestamp once two are held.
	for range 3 {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	// Every socket was born before Accept returned: its child was
	// established, and connect's transitions run in the connecting call.
	tr.Stop()
	withPrev := 0
	for batch := range tr.Events() {
		for _, ev := range batch {
			if ev.HasPrevState {
				withPrev++
			}
		}
		tr.Recycle(batch)
	}
	lost, err := tr.Lost()
	if err != nil {
		t.Fatal(err)
	}
	if lost[events.LostTableFull] < 4 {
		t.Errorf("table_full %d, want at least 4 evictions for 6 sockets in 2 slots (lost %v)", lost[events.LostTableFull], lost)
	}
	if withPrev == 0 {
		t.Error("no transition has prev_state_ns")
	}
}
