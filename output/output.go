// Package output writes events as JSON lines or as a table for terminals.
package output

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/pipeline"
)

// Format selects how events are written.
type Format string

const (
	FormatAuto  Format = "auto" // table on a terminal, JSON otherwise
	FormatJSON  Format = "json"
	FormatTable Format = "table"
)

// ParseFormat validates a --output value.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case FormatAuto, FormatJSON, FormatTable:
		return f, nil
	}
	return "", fmt.Errorf("unknown output format %q (want auto, json or table)", s)
}

// Writer writes events through a buffer. Flush pushes buffered lines out;
// the caller flushes when it has nothing more to write for now. Written
// counts the lines that reached the underlying writer whole.
type Writer struct {
	w       io.Writer
	pending []byte // whole lines not yet written
	ends    []int  // where each event line of pending ends (not headers, not status)
	buf     []byte
	table   bool
	width   int // terminal width to fit table rows in; 0: no limit
	rows    int
	written uint64
	// Table address columns grow to the widest address seen, so that IPv4
	// rows stay narrow and the header is re-aligned when they grow.
	colEvent, colLocal, colRemote int
}

// flushAt is how much output is buffered before Write flushes by itself.
const flushAt = 64 << 10

// New returns a writer for format, which must not be FormatAuto. For a
// table, width is the terminal's width: rows are cut to fit it, as ps
// does (the JSON output has everything); 0 never cuts.
func New(w io.Writer, format Format, width int) *Writer {
	return &Writer{
		w: w, pending: make([]byte, 0, flushAt+4096), buf: make([]byte, 0, 512),
		table: format == FormatTable, width: width, colEvent: minColEvent, colLocal: minColAddr, colRemote: minColAddr,
	}
}

// Write writes one event.
func (w *Writer) Write(e *events.Event) error {
	if w.table {
		if w.fit(e) || w.rows%40 == 0 {
			if err := w.line(w.appendHeader(w.buf[:0])); err != nil {
				return err
			}
		}
		w.rows++
		return w.event(w.appendRow(w.buf[:0], e))
	}
	return w.event(events.AppendJSON(w.buf[:0], e))
}

// event queues the line of an event, which Written counts.
func (w *Writer) event(b []byte) error {
	w.ends = append(w.ends, len(w.pending)+len(cut(b, w.width))+1)
	return w.line(b)
}

// WriteStatus writes a status row in a table; JSON output has none, as
// log pipelines have metrics for that.
func (w *Writer) WriteStatus(st *pipeline.Status) error {
	if !w.table {
		return nil
	}
	if w.rows%40 == 0 {
		if err := w.line(w.appendHeader(w.buf[:0])); err != nil {
			return err
		}
	}
	w.rows++
	b := w.buf[:0]
	b = time.Now().AppendFormat(b, "15:04:05")
	b = pad(b, 0, colTime)
	start := len(b)
	b = append(b, "status"...)
	b = pad(b, start, w.colEvent)
	rate := float64(st.Closes) / max(st.Interval.Seconds(), 1e-3)
	prec := 0
	if rate < 10 {
		prec = 1
	}
	b = fmt.Appendf(b, "close-wait=%d stuck=%d closes/s=%.*f", st.InCloseWait, st.Stuck, prec, rate)
	if st.HasP99 {
		b = append(b, " p99<"...)
		b = appendCompact(b, st.P99)
	}
	return w.line(b)
}

// line queues one line, cut to the terminal width.
func (w *Writer) line(b []byte) error {
	if w.table {
		b = cut(b, w.width)
	}
	b = append(b, '\n')
	w.buf = b
	w.pending = append(w.pending, b...)
	if len(w.pending) >= flushAt {
		return w.Flush()
	}
	return nil
}

// Flush writes out buffered lines.
func (w *Writer) Flush() error {
	if len(w.pending) == 0 {
		return nil
	}
	n, err := w.w.Write(w.pending)
	for _, end := range w.ends {
		if end <= n {
			w.written++
		}
	}
	if err == nil && n < len(w.pending) {
		err = io.ErrShortWrite
	}
	// On error what is left would be a torn line: drop it, writing has
	// failed.
	w.pending, w.ends = w.pending[:0], w.ends[:0]
	return err
}

// Written is the number of events written out whole.
func (w *Writer) Written() uint64 { return w.written }

// Column widths of the table; DETAIL takes the rest of the line. The
// event and address columns start at their minimum and grow to fit what
// they show (not_destroyed is longer than what closewait writes).
const (
	colTime     = 8
	minColEvent = 10
	minColAddr  = 15
)

// Expect widens the event column for kinds the caller will write, so that
// the header need not be printed again when the first of them comes.
func (w *Writer) Expect(kinds ...events.Kind) {
	for _, k := range kinds {
		w.colEvent = max(w.colEvent, len(k.String()))
	}
}

func (w *Writer) fit(e *events.Event) (grew bool) {
	if e.Kind == events.KindLost || e.Kind == events.KindSummary {
		return false
	}
	if n := len(e.Kind.String()); n > w.colEvent {
		w.colEvent, grew = n, true
	}
	local, localPort := e.LocalAddr, e.LocalPort
	if e.Kind == events.KindListenDrops && e.Listener != nil {
		local, localPort = e.Listener.Local.Addr(), e.Listener.Local.Port()
	}
	if n := endpointLen(local, localPort); n > w.colLocal {
		w.colLocal, grew = n, true
	}
	if n := endpointLen(e.RemoteAddr, e.RemotePort); n > w.colRemote {
		w.colRemote, grew = n, true
	}
	return grew
}

func endpointLen(addr netip.Addr, port uint16) int {
	var a [64]byte
	return len(netip.AddrPortFrom(addr, port).AppendTo(a[:0]))
}

func (w *Writer) appendHeader(b []byte) []byte {
	return fmt.Appendf(b, "%-*s %-*s %-*s %-*s %s",
		colTime, "TIME", w.colEvent, "EVENT", w.colLocal, "LOCAL", w.colRemote, "REMOTE", "DETAIL")
}

func (w *Writer) appendRow(b []byte, e *events.Event) []byte {
	start := len(b)
	b = e.Time.Local().AppendFormat(b, "15:04:05")
	b = pad(b, start, colTime)
	start = len(b)
	b = append(b, e.Kind.String()...)
	b = pad(b, start, w.colEvent)
	if e.Kind == events.KindSummary {
		return append(b, e.RowText...)
	}
	if e.Kind == events.KindLost {
		for cause, n := range e.Lost {
			if n > 0 {
				b = fmt.Appendf(b, "%s=%d ", events.LostCause(cause), n)
			}
		}
		return b
	}
	if e.Kind == events.KindListenDrops {
		return w.appendListenDrops(b, e)
	}
	start = len(b)
	b = appendEndpoint(b, e.LocalAddr, e.LocalPort)
	b = pad(b, start, w.colLocal)
	start = len(b)
	b = appendEndpoint(b, e.RemoteAddr, e.RemotePort)
	b = pad(b, start, w.colRemote)
	// The most telling value first, then who: a row cut to the terminal
	// keeps what matters most.
	switch e.Kind {
	case events.KindTransition:
		b = fmt.Appendf(b, "%s -> %s", e.OldState, e.NewState)
		if e.HasPrevState {
			b = append(b, " after "...)
			b = appendCompact(b, time.Duration(e.PrevStateNS))
		}
		return appendTask(b, " task=", &e.Task)
	case events.KindCloseWait:
		b = append(b, "peer closed"...)
		if !e.AgeKnown {
			b = append(b, " before start"...)
		}
		b = appendOwners(b, e)
	case events.KindAcceptFailed:
		// The listener, the reason, the process that cannot accept.
		b = append(b, e.Reason...)
		b = appendTask(b, " ", &e.Task)
	case events.KindDestroyed, events.KindNotDestroyed:
		if e.AgeKnown {
			b = appendCompact(b, time.Duration(e.AgeNS))
		} else {
			b = append(b, '?')
		}
		if e.Kind == events.KindNotDestroyed {
			b = append(b, ' ')
			b = append(b, e.Reason...)
		}
		b = appendOwners(b, e)
	case events.KindStuck, events.KindAbort:
		if !e.AgeKnown {
			b = append(b, '>')
		}
		b = appendCompact(b, time.Duration(e.AgeNS))
		// Why: a stuck socket's diagnosis, an abort's cause.
		switch {
		case e.Kind == events.KindStuck && e.DiagKnown && e.ReadEOF:
			b = append(b, " read-eof"...)
		case e.Kind == events.KindStuck && e.DiagKnown && e.UnreadBytes == 0:
			// Not "unread=0", which reads as "read everything": only the
			// FIN waits, unread.
			b = append(b, " eof-unread"...)
		case e.Kind == events.KindStuck && e.DiagKnown:
			b = fmt.Appendf(b, " unread=%d", e.UnreadBytes)
		}
		if e.Kind == events.KindAbort {
			b = append(b, ' ')
			b = append(b, e.Cause.String()...)
		}
		b = appendOwners(b, e)
		if p := e.Peer; e.Kind == events.KindStuck && p != nil {
			// The local client whose connection this is.
			b = appendFirstOwner(b, " client=", p.Owners, false)
		}
	case events.KindAppClose:
		if e.AgeKnown {
			b = appendCompact(b, time.Duration(e.AgeNS))
		} else {
			b = append(b, '?')
		}
		// Who closed it; the holders it had otherwise.
		if e.HasCloser {
			b = appendTask(b, " ", &e.Closer)
			if e.ClosedByExit {
				b = append(b, " exit"...)
			}
		} else {
			b = appendOwners(b, e)
		}
		switch {
		case e.PeerReset:
			b = append(b, " peer-reset"...)
		case e.NewState == events.StateClose:
			b = append(b, " reset"...)
		}
		if e.WasStuck {
			b = append(b, " stuck"...)
		}
	}
	return b
}

// appendListenDrops appends a listener's drops: the listener in LOCAL,
// "*" in REMOTE (as ss shows a listener), then how many it dropped, its
// queue and who holds it.
func (w *Writer) appendListenDrops(b []byte, e *events.Event) []byte {
	l := e.Listener
	if l == nil {
		return fmt.Appendf(b, "dropped %d", e.Dropped)
	}
	start := len(b)
	b = l.Local.AppendTo(b)
	b = pad(b, start, w.colLocal)
	start = len(b)
	b = append(b, '*')
	b = pad(b, start, w.colRemote)
	b = fmt.Appendf(b, "dropped %d in ", e.Dropped)
	b = appendCompact(b, time.Duration(e.DropIntervalNS))
	b = fmt.Appendf(b, " queue %d/%d", l.Queue, l.Backlog)
	return appendFirstOwner(b, " listener=", l.Owners, true)
}

// cut shortens a line to width columns (runes, as every escape is already
// visible text), marking the cut.
func cut(b []byte, width int) []byte {
	if width <= 0 || len(b) <= width {
		return b
	}
	cols := 0
	for i := 0; i < len(b); {
		_, size := utf8.DecodeRune(b[i:])
		if cols == width-1 {
			return append(b[:i], "…"...)
		}
		cols++
		i += size
	}
	return b
}

// appendCompact appends d with three significant digits at most: 850ns,
// 12.3µs, 302ms, 1.04s, 2m3s, 1h2m.
func appendCompact(b []byte, d time.Duration) []byte {
	switch {
	case d < 0:
		return append(b, '?')
	case d < time.Microsecond:
		return fmt.Appendf(b, "%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return appendSig(b, float64(d)/1e3, "µs")
	case d < time.Second:
		return appendSig(b, float64(d)/1e6, "ms")
	case d < time.Minute:
		return appendSig(b, d.Seconds(), "s")
	case d < time.Hour:
		return fmt.Appendf(b, "%dm%ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	}
	return fmt.Appendf(b, "%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
}

func appendSig(b []byte, v float64, unit string) []byte {
	switch {
	case v >= 100:
		b = strconv.AppendFloat(b, v, 'f', 0, 64)
	case v >= 10:
		b = strconv.AppendFloat(b, v, 'f', 1, 64)
	default:
		b = strconv.AppendFloat(b, v, 'f', 2, 64)
	}
	return append(b, unit...)
}

// appendOwners names the first owner and counts the others.
func appendOwners(b []byte, e *events.Event) []byte {
	switch {
	case len(e.Owners) > 0:
		b = appendFirstOwner(b, " ", e.Owners, true)
	case e.OwnerSource == events.OwnerNoFile && e.Listener != nil:
		// In an accept queue: the listener's holder does not accept.
		b = fmt.Appendf(b, " queued %d/%d", e.Listener.Queue, e.Listener.Backlog)
		b = appendFirstOwner(b, " listener=", e.Listener.Owners, false)
	case e.OwnerSource == events.OwnerNoFile:
		b = append(b, " no-file"...)
	}
	return b
}

// appendFirstOwner appends prefix and the first owner as pid/comm, and
// with countOthers +N for the N others; nothing without an owner.
func appendFirstOwner(b []byte, prefix string, owners []events.Owner, countOthers bool) []byte {
	if len(owners) == 0 {
		return b
	}
	b = append(b, prefix...)
	b = strconv.AppendInt(b, int64(owners[0].PID), 10)
	b = append(b, '/')
	b = AppendPrintable(b, []byte(owners[0].Comm))
	if n := len(owners) - 1; countOthers && n > 0 {
		b = fmt.Appendf(b, "+%d", n)
	}
	return b
}

func appendEndpoint(b []byte, addr netip.Addr, port uint16) []byte {
	return netip.AddrPortFrom(addr, port).AppendTo(b)
}

func appendTask(b []byte, prefix string, t *events.Task) []byte {
	b = append(b, prefix...)
	b = strconv.AppendUint(b, uint64(t.PID), 10)
	b = append(b, '/')
	return AppendPrintable(b, t.Comm.Bytes())
}

// AppendPrintable appends s with every byte or rune a terminal could act on
// (C0 and C1 controls, DEL, invalid UTF-8, other non-printable runes)
// replaced by a visible escape, so kernel-supplied names cannot move the
// cursor or change colours.
func AppendPrintable(b []byte, s []byte) []byte {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = fmt.Appendf(b, `\x%02x`, s[i])
		case r < utf8.RuneSelf && (r < 0x20 || r == 0x7f):
			b = fmt.Appendf(b, `\x%02x`, r)
		case r == '\\':
			b = append(b, `\\`...)
		case !unicode.IsPrint(r):
			b = fmt.Appendf(b, `\u%04x`, r)
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}

// pad extends the column that began at start to width, plus one space.
func pad(b []byte, start, width int) []byte {
	for n := len(b) - start; n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, ' ')
}
