package pipeline

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/track"
)

// diagSource is a source that can say why a socket stays (Diagnosing).
type diagSource struct {
	*fakeSource
	mu       sync.Mutex
	diagnose int
	release  int
}

func (d *diagSource) Diagnoser() (func(*events.Event), func()) {
	return func(ev *events.Event) {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.diagnose++
			if ev.Sock == 1 {
				ev.DiagKnown, ev.UnreadBytes, ev.SinceRecvNS = true, 100, 5e9
			}
		}, func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			d.release++
		}
}

// A stuck report carries the source's diagnosis, the tracker keeps it for
// readers, and what the diagnosis keeps is released after the batch.
func TestStuckDiagnosed(t *testing.T) {
	src := &diagSource{fakeSource: newFakeSource()}
	src.put(socket(1, 2*threshold))
	src.put(socket(2, 2*threshold)) // the source cannot tell
	out := &recorder{}
	p := New(Config{CloseWait: true, Track: track.Config{Threshold: threshold, MaxSockets: 10}}, src,
		&fakeAttr{owners: make(map[uint64]*events.Process)}, out)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	src.progress()
	stuck := func(sock uint64) events.Event {
		return out.waitFor(t, "stuck", func(ev events.Event) bool { return ev.Kind == events.KindStuck && ev.Sock == sock })
	}
	if st := stuck(1); !st.DiagKnown || st.UnreadBytes != 100 || st.SinceRecvNS != 5e9 {
		t.Errorf("stuck = %+v, want the diagnosis", st)
	}
	if st := stuck(2); st.DiagKnown {
		t.Errorf("stuck = %+v, want no diagnosis", st)
	}
	for info := range p.Tracker().All() {
		if want := info.Sock == 1; info.DiagKnown != want || info.UnreadData != want || info.ReadEOF {
			t.Errorf("tracker: %+v, want diag_known and unread data for sock 1 only", info)
		}
	}
	deadline := time.Now().Add(waitTimeout)
	for {
		src.mu.Lock()
		n, r := src.diagnose, src.release
		src.mu.Unlock()
		if n == 2 && r >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("diagnosed %d times, released %d times; want 2 and at least 1", n, r)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
