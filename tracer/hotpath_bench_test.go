package tracer

import (
	"bufio"
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/track"
)

// The hot path of `tcptrace trace`: decode a record, work out the time in
// the previous state, encode it as a JSON line, write it through a buffered
// writer. The records are the five transitions of a connecting socket, a new
// socket every five. Reports ns/event and allocs/event (the target is 0).
func BenchmarkTraceHotPath(b *testing.B) {
	d := newDecoder(bootclock.New())
	states := newStateClock(DefaultMaxTracked)
	rec := tcptraceEvent{
		TsNs: 5e9, Skaddr: 0xffff888012345678, Cookie: 0x1a2b, Netns: 4026531840, Pid: 4242,
		Comm: [16]int8{'c', 'o', 'u', 'c', 'h', 'd', 'b'}, Family: afInet, Sport: 5984, Dport: 40000,
		Kind: evTransition, Flags: flagCookie, Ino: 77, CgroupId: 1,
	}
	life := [][2]events.State{
		{events.StateClose, events.StateSynSent}, {events.StateSynSent, events.StateEstablished},
		{events.StateEstablished, events.StateFinWait1}, {events.StateFinWait1, events.StateFinWait2},
		{events.StateFinWait2, events.StateClose},
	}
	copy(rec.Saddr[:], []byte{10, 0, 0, 1})
	copy(rec.Daddr[:], []byte{10, 0, 0, 2})
	raw := record(b, rec)
	w := bufio.NewWriterSize(io.Discard, 64<<10)
	line := make([]byte, 0, 512)
	var ev events.Event
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		step := life[i%len(life)]
		binary.LittleEndian.PutUint64(raw[offSkaddr:], rec.Skaddr+uint64(i/len(life))*2048)
		binary.LittleEndian.PutUint64(raw[offTS:], rec.TsNs+uint64(i)*1000)
		raw[offOldState], raw[offNewState] = byte(step[0]), byte(step[1])
		if err := d.decode(raw, &ev); err != nil {
			b.Fatal(err)
		}
		states.observe(&ev)
		line = append(events.AppendJSON(line[:0], &ev), '\n')
		w.Write(line)
	}
}

// The hot path of `tcptrace closewait` for a socket that closes promptly:
// decode its close_wait and app_close records, correlate both in the
// tracker, encode and write both lines.
func BenchmarkCloseWaitHotPath(b *testing.B) {
	d := newDecoder(bootclock.New())
	enter := tcptraceEvent{TsNs: 5e9, Skaddr: 0xffff888012345678, Cookie: 0x1a2b, Netns: 4026531840,
		Family: afInet, Sport: 5984, Dport: 40000, Kind: evCWEnter, Oldstate: 1, Newstate: 8,
		Flags: flagCookie | flagTracked, Ino: 77, CgroupId: 1}
	leave := enter
	leave.TsNs, leave.AuxNs, leave.Kind, leave.Oldstate, leave.Newstate = 5.3e9, 5e9, evCWLeave, 8, 9
	leave.Flags = flagCookie | flagAuxValid | flagApp
	rawEnter, rawLeave := record(b, enter), record(b, leave)
	tk := track.New(track.Config{Threshold: time.Minute, MaxSockets: 1 << 18}, bootclock.New())
	w := bufio.NewWriterSize(io.Discard, 64<<10)
	line := make([]byte, 0, 512)
	emit := func(ev *events.Event) {
		line = append(events.AppendJSON(line[:0], ev), '\n')
		w.Write(line)
	}
	var ev events.Event
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		// A new socket each time, as in real churn.
		binary.LittleEndian.PutUint64(rawEnter[offCookie:], uint64(i))
		binary.LittleEndian.PutUint64(rawLeave[offCookie:], uint64(i))
		for _, raw := range [][]byte{rawEnter, rawLeave} {
			if err := d.decode(raw, &ev); err != nil {
				b.Fatal(err)
			}
			tk.Observe(&ev, emit)
		}
	}
}
