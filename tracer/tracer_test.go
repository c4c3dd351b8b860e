package tracer_test

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/testenv"
	"github.com/tcptrace/tcptrace/tracer"
)

// settledPrograms waits for the count to reach want: the kernel frees a
// closed program after an RCU grace period, not at close.
func settledPrograms(t *testing.T, want int) int {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := loadedPrograms(t)
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loadedPrograms counts tcptrace's programs in the kernel, from any process.
func loadedPrograms(t *testing.T) int {
	t.Helper()
	n := 0
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if info, err := p.Info(); err == nil && strings.HasPrefix(info.Name, "tcptrace_") {
			n++
		}
		p.Close()
	}
	return n
}

func TestLifecycle(t *testing.T) {
	testenv.RequirePrivileged(t)
	before := loadedPrograms(t)
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
		if got := loadedPrograms(t); got != before+1 {
			t.Errorf("%s: %d tcptrace programs loaded, want %d", attach, got, before+1)
		}
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		ln.Close()
		time.Sleep(50 * time.Millisecond)

		// Stop delivers what was produced before it, then closes Events.
		tr.Stop()
		var got []events.Event
		timeout := time.After(5 * time.Second)
	drain:
		for {
			select {
			case ev, ok := <-tr.Events():
				if !ok {
					break drain
				}
				got = append(got, ev)
			case <-timeout:
				t.Fatalf("%s: Events not closed 5s after Stop", attach)
			}
		}
		if err := tr.Err(); err != nil {
			t.Errorf("%s: Err after Stop = %v", attach, err)
		}
		// Listener CLOSE->LISTEN predates the tracer; the rest is traced:
		// client 2+ transitions, child 2, listener LISTEN->CLOSE.
		if len(got) < 5 {
			t.Errorf("%s: %d events after Stop, want the connection's transitions", attach, len(got))
		}
		lost, err := tr.Lost()
		if err != nil || lost.Total() != 0 {
			t.Errorf("%s: Lost() = %v, %v; want no loss", attach, lost, err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("%s: Close: %v", attach, err)
		}
		if err := tr.Close(); err != nil {
			t.Errorf("%s: second Close: %v", attach, err)
		}
		if got := settledPrograms(t, before); got != before {
			t.Errorf("%s: %d tcptrace programs after Close, want %d", attach, got, before)
		}
	}
}

// Close without Stop, while events may still be queued, frees everything.
func TestCloseWithoutStop(t *testing.T) {
	testenv.RequirePrivileged(t)
	before := loadedPrograms(t)
	tr, err := tracer.New(tracer.Config{Mode: tracer.ModeCloseWait})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	for range tr.Events() {
	}
	if got := settledPrograms(t, before); got != before {
		t.Errorf("%d tcptrace programs after Close, want %d", got, before)
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
