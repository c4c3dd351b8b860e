package output

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/pipeline"
)

func TestAppendPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"nginx":              "nginx",
		"\x1b[31mred":        `\x1b[31mred`,
		"a\nb\rc\td":         `a\x0ab\x0dc\x09d`,
		"bad\xffutf8":        `bad\xffutf8`,
		"c1\u009bcsi":        `c1\u009bcsi`,
		"del\x7f":            `del\x7f`,
		`back\slash`:         `back\\slash`,
		"ünïcödé":            "ünïcödé",
		"bidi\u202eoverride": `bidi\u202eoverride`,
	} {
		if got := string(AppendPrintable(nil, []byte(in))); got != want {
			t.Errorf("AppendPrintable(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTableHasNoControlCharacters(t *testing.T) {
	var buf bytes.Buffer
	w := New(&buf, FormatTable, 0)
	ev := events.Event{
		Kind: events.KindTransition, Time: time.Now(), Sock: 1, Family: events.FamilyIPv6,
		LocalAddr: netip.MustParseAddr("::1"), LocalPort: 80, RemoteAddr: netip.MustParseAddr("::1"), RemotePort: 9,
		OldState: events.StateEstablished, NewState: events.StateCloseWait,
	}
	copy(ev.Task.Comm[:], "\x1b]0;pwn\x07\n\xff")
	if err := w.Write(&ev); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, r := range out {
		if (r < 0x20 && r != '\n') || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			t.Fatalf("table output holds control character %U: %q", r, out)
		}
	}
	if strings.Count(out, "\n") != 2 || !strings.Contains(out, "[::1]:80") {
		t.Errorf("table output = %q, want header and one row with [::1]:80", out)
	}
}

func TestParseFormat(t *testing.T) {
	for _, ok := range []string{"auto", "json", "table"} {
		if _, err := ParseFormat(ok); err != nil {
			t.Errorf("ParseFormat(%q): %v", ok, err)
		}
	}
	if _, err := ParseFormat("xml"); err == nil {
		t.Error("ParseFormat(xml) succeeded")
	}
}

// rows renders events as table rows, width 0 (no cut) unless given.
func rows(t *testing.T, width int, evs ...events.Event) []string {
	t.Helper()
	var buf bytes.Buffer
	w := New(&buf, FormatTable, width)
	for i := range evs {
		if err := w.Write(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.WriteStatus(&pipeline.Status{InCloseWait: 4512, Stuck: 4500, Closes: 65000, Interval: 5 * time.Second, P99: 2 * time.Millisecond, HasP99: true}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

func sample(local, remote string) []events.Event {
	proc := &events.Process{PID: 12345, Comm: "couchdb"}
	base := events.Event{
		Time: time.Now(), Sock: 0x1234567, Family: events.FamilyIPv4,
		LocalAddr: netip.MustParseAddr(local), LocalPort: 5984, RemoteAddr: netip.MustParseAddr(remote), RemotePort: 51234,
		Owners: []events.Owner{{Process: proc, FD: 12}}, OwnerSource: events.OwnerProc, AgeKnown: true,
	}
	var closer events.Task
	closer.PID = 12345
	copy(closer.Comm[:], "couchdb")
	mk := func(k events.Kind, f func(*events.Event)) events.Event {
		e := base
		e.Kind = k
		f(&e)
		return e
	}
	return []events.Event{
		mk(events.KindCloseWait, func(*events.Event) {}),
		mk(events.KindStuck, func(e *events.Event) { e.AgeNS = int64(4*time.Minute + 3*time.Second) }),
		mk(events.KindAppClose, func(e *events.Event) {
			e.AgeNS, e.WasStuck, e.Closer, e.HasCloser, e.NewState = int64(1800*time.Millisecond), true, closer, true, events.StateLastAck
			e.OwnerSource = events.OwnerLastSeen
		}),
		mk(events.KindAbort, func(e *events.Event) { e.AgeNS, e.NewState = int64(90*time.Second), events.StateClose }),
		{Kind: events.KindLost, Time: time.Now(), Lost: events.LostCounts{events.LostRingbufFull: 12}},
	}
}

// IPv4 rows fit an 80-column terminal: typical ones whole, the widest
// addresses cut to the terminal's width.
func TestTableFits80Columns(t *testing.T) {
	for _, row := range rows(t, 0, sample("10.244.12.34", "10.244.7.8")...) {
		if n := utf8.RuneCountInString(row); n > 80 {
			t.Errorf("%d columns: %q", n, row)
		}
	}
	long := rows(t, 80, sample("255.255.255.255", "255.255.255.254")...)
	for _, row := range long {
		if n := utf8.RuneCountInString(row); n > 80 {
			t.Errorf("%d columns on an 80-column terminal: %q", n, row)
		}
	}
	if !strings.Contains(strings.Join(long, "\n"), "…") {
		t.Errorf("no row was cut, so this tests nothing:\n%s", strings.Join(long, "\n"))
	}
	// What each row says first survives the cut.
	for _, want := range []string{"peer closed", "4m3s", "1.80s", "1m30s", "ringbuf_full=12", "close-wait=4512"} {
		if !strings.Contains(strings.Join(long, "\n"), want) {
			t.Errorf("cut rows lost %q:\n%s", want, strings.Join(long, "\n"))
		}
	}
}

func TestTableColumnsGrowAndRealign(t *testing.T) {
	v6 := sample("10.0.0.1", "10.0.0.2")[1]
	v6.Family, v6.LocalAddr, v6.RemoteAddr = events.FamilyIPv6, netip.MustParseAddr("fd00:1234::1"), netip.MustParseAddr("fd00:1234::2")
	got := rows(t, 0, sample("10.0.0.1", "10.0.0.2")[1], v6, sample("10.0.0.1", "10.0.0.2")[1])
	if len(got) != 6 || !strings.HasPrefix(got[0], "TIME") || !strings.HasPrefix(got[2], "TIME") {
		t.Fatalf("rows %q: want a header, a row, a new header for wider columns, two rows and the status", got)
	}
	col := func(row string) int { return strings.Index(row, "4m3s") }
	if col(got[3]) != col(got[4]) || strings.Index(got[2], "DETAIL") != col(got[3]) {
		t.Errorf("rows after the wider header are not aligned with it:\n%s", strings.Join(got, "\n"))
	}
}

// kill's outcomes, not_destroyed the longest event name, line up with
// the header whatever the order of the rows.
func TestTableAlignedForEveryOutcome(t *testing.T) {
	base := sample("10.0.0.1", "10.0.0.2")[1]
	destroyed, dry, kept := base, base, base
	destroyed.Kind, destroyed.Method = events.KindDestroyed, "kfunc"
	dry.Kind, dry.Reason = events.KindNotDestroyed, "dry_run"
	kept.Kind, kept.Reason = events.KindNotDestroyed, "left_close_wait"
	for _, order := range [][]events.Event{{destroyed, dry, kept}, {dry, destroyed, kept}} {
		got := rows(t, 0, order...)
		got = got[:len(got)-1] // the status row
		header := -1
		for i, row := range got {
			if strings.HasPrefix(row, "TIME") {
				header = i
			}
		}
		local := strings.Index(got[header], "LOCAL")
		detail := strings.Index(got[header], "DETAIL")
		for _, row := range got[header+1:] {
			if strings.Index(row, "10.0.0.1:5984") != local || strings.Index(row, "4m3s") != detail {
				t.Errorf("row out of line with its header:\n%s", strings.Join(got, "\n"))
				break
			}
		}
		if header != 0 {
			// A header reprinted for the wider column: the rows before
			// it were aligned with the first one.
			for _, row := range got[1:header] {
				if strings.Index(row, "4m3s") != strings.Index(got[0], "DETAIL") {
					t.Errorf("row out of line with the first header:\n%s", strings.Join(got, "\n"))
				}
			}
		}
	}
	// kill expects its kinds: one header, all rows under it.
	var buf bytes.Buffer
	w := New(&buf, FormatTable, 0)
	w.Expect(events.KindDestroyed, events.KindNotDestroyed)
	for _, e := range []events.Event{destroyed, dry, kept} {
		if err := w.Write(&e); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	if n := strings.Count(buf.String(), "TIME "); n != 1 {
		t.Errorf("%d headers after Expect, want 1:\n%s", n, buf.String())
	}
}

func TestAppendCompact(t *testing.T) {
	for d, want := range map[time.Duration]string{
		850:                           "850ns",
		12300 * time.Nanosecond:       "12.3µs",
		302 * time.Millisecond:        "302ms",
		1234567 * time.Nanosecond:     "1.23ms",
		1042 * time.Millisecond:       "1.04s",
		12345 * time.Millisecond:      "12.3s",
		2*time.Minute + 3*time.Second: "2m3s",
		26*time.Hour + 5*time.Minute:  "26h5m",
		-1:                            "?",
	} {
		if got := string(appendCompact(nil, d)); got != want {
			t.Errorf("appendCompact(%v) = %q, want %q", time.Duration(d), got, want)
		}
	}
}

// failAfter accepts n bytes, then fails as a full disk does.
type failAfter struct {
	n   int
	got bytes.Buffer
}

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) <= f.n {
		f.n -= len(p)
		return f.got.Write(p)
	}
	k := f.n
	f.n = 0
	f.got.Write(p[:k])
	return k, syscall.ENOSPC
}

// Written counts only the lines that reached the writer whole.
func TestWrittenCountsWholeLines(t *testing.T) {
	for _, room := range []int{0, 100, 1000, 5000, 1 << 20} {
		dst := &failAfter{n: room}
		w := New(dst, FormatJSON, 0)
		var err error
		for i := 0; i < 100 && err == nil; i++ {
			for _, ev := range sample("10.0.0.1", "10.0.0.2") {
				if err = w.Write(&ev); err != nil {
					break
				}
			}
		}
		if err == nil {
			err = w.Flush()
		}
		whole := uint64(bytes.Count(dst.got.Bytes(), []byte("\n")))
		if w.Written() != whole {
			t.Errorf("room %d: Written() = %d, %d whole lines reached the writer", room, w.Written(), whole)
		}
		if room < 1<<20 && !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("room %d: error %v, want ENOSPC", room, err)
		}
	}
}

// JSON output carries no status: log pipelines take figures from metrics.
func TestJSONHasNoStatus(t *testing.T) {
	var buf bytes.Buffer
	w := New(&buf, FormatJSON, 0)
	if err := w.WriteStatus(&pipeline.Status{InCloseWait: 1}); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	if buf.Len() != 0 || w.Written() != 0 {
		t.Errorf("JSON status wrote %q", buf.String())
	}
}

// Written counts events, not the table's headers and status rows.
func TestWrittenCountsEventsNotHeaders(t *testing.T) {
	var buf bytes.Buffer
	w := New(&buf, FormatTable, 80)
	evs := sample("10.0.0.1", "10.0.0.2")
	for i := range 45 {
		if err := w.Write(&evs[i%len(evs)]); err != nil {
			t.Fatal(err)
		}
	}
	w.WriteStatus(&pipeline.Status{})
	w.Flush()
	if lines := strings.Count(buf.String(), "\n"); w.Written() != 45 || lines != 45+2+1 {
		t.Errorf("Written() = %d over %d lines, want 45 events in 48 lines (2 headers, 1 status)", w.Written(), lines)
	}
}

// The table says why: a stuck socket's diagnosis, an abort's cause, a
// close by the process exiting.
func TestTableSaysWhy(t *testing.T) {
	base := sample("10.0.0.1", "10.0.0.2")[0]
	eof, unread, idle, abort, exit := base, base, base, base, base
	eof.Kind, eof.DiagKnown, eof.ReadEOF = events.KindStuck, true, true
	unread.Kind, unread.DiagKnown, unread.UnreadBytes = events.KindStuck, true, 100
	idle.Kind, idle.DiagKnown = events.KindStuck, true // not read since the FIN, no data
	abort.Kind, abort.Cause = events.KindAbort, events.CauseReset
	exit.Kind, exit.HasCloser, exit.ClosedByExit = events.KindAppClose, true, true
	copy(exit.Closer.Comm[:], "couchdb")
	got := rows(t, 0, eof, unread, idle, abort, exit)
	if len(got) > 3 && strings.Contains(got[3], "unread=0") {
		t.Errorf("a socket not read since the FIN reads as drained: %q", got[3])
	}
	for i, want := range []string{"read-eof", "unread=100", "eof-unread", "reset", "couchdb exit"} {
		if i+1 >= len(got) || !strings.Contains(got[i+1], want) {
			t.Errorf("row %d %q, want it to say %q", i, got[min(i+1, len(got)-1)], want)
		}
	}
}

// A listener's drops: the listener in LOCAL, aligned with the sockets'
// rows, then what it dropped, its queue and who holds it.
func TestTableListenDrops(t *testing.T) {
	stuck := sample("10.0.0.1", "10.0.0.2")[1]
	drops := events.Event{Kind: events.KindListenDrops, Time: stuck.Time, Dropped: 38, DropIntervalNS: 5e9,
		Listener: &events.Listener{Local: netip.MustParseAddrPort("0.0.0.0:5984"), Queue: 2, Backlog: 1, Drops: 38, Owners: stuck.Owners}}
	got := rows(t, 0, stuck, drops)
	var header, row string
	for _, r := range got {
		switch {
		case strings.HasPrefix(r, "TIME"):
			header = r
		case strings.Contains(r, "listen_drops"):
			row = r
		}
	}
	if strings.Index(row, "0.0.0.0:5984") != strings.Index(header, "LOCAL") || strings.Index(row, "*") != strings.Index(header, "REMOTE") ||
		strings.Index(row, "dropped 38 in 5.00s queue 2/1 listener=12345/couchdb") != strings.Index(header, "DETAIL") {
		t.Errorf("listen_drops row:\n%s", strings.Join(got, "\n"))
	}
}
