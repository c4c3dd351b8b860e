// Package output writes events as JSON lines or as a table for terminals.
package output

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tcptrace/tcptrace/events"
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
// the caller flushes when it has nothing more to write for now.
type Writer struct {
	w     *bufio.Writer
	buf   []byte
	table bool
	rows  int
}

// New returns a writer for format, which must not be FormatAuto.
func New(w io.Writer, format Format) *Writer {
	return &Writer{w: bufio.NewWriterSize(w, 64<<10), buf: make([]byte, 0, 512), table: format == FormatTable}
}

// Write writes one event.
func (w *Writer) Write(e *events.Event) error {
	b := w.buf[:0]
	if w.table {
		if w.rows%40 == 0 {
			b = append(b, tableHeader...)
		}
		w.rows++
		b = appendRow(b, e)
	} else {
		b = events.AppendJSON(b, e)
	}
	b = append(b, '\n')
	w.buf = b
	_, err := w.w.Write(b)
	return err
}

// Flush writes out buffered lines.
func (w *Writer) Flush() error { return w.w.Flush() }

// Column widths of the table; DETAIL takes the rest of the line.
const (
	colTime   = 12
	colEvent  = 10
	colSock   = 16
	colLocal  = 30
	colRemote = 30
)

var tableHeader = fmt.Sprintf("%-*s %-*s %-*s %-*s %-*s %s\n",
	colTime, "TIME", colEvent, "EVENT", colSock, "SOCK", colLocal, "LOCAL", colRemote, "REMOTE", "DETAIL")

func appendRow(b []byte, e *events.Event) []byte {
	start := len(b)
	b = e.Time.Local().AppendFormat(b, "15:04:05.000")
	b = pad(b, start, colTime)
	start = len(b)
	b = append(b, e.Kind.String()...)
	b = pad(b, start, colEvent)
	if e.Kind == events.KindLost {
		for cause, n := range e.Lost {
			if n > 0 {
				b = fmt.Appendf(b, "%s=%d ", events.LostCause(cause), n)
			}
		}
		return b
	}
	start = len(b)
	b = strconv.AppendUint(b, e.Sock, 16)
	b = pad(b, start, colSock)
	start = len(b)
	b = appendEndpoint(b, e.LocalAddr, e.LocalPort)
	b = pad(b, start, colLocal)
	start = len(b)
	b = appendEndpoint(b, e.RemoteAddr, e.RemotePort)
	b = pad(b, start, colRemote)
	switch e.Kind {
	case events.KindTransition:
		b = fmt.Appendf(b, "%s -> %s", e.OldState, e.NewState)
		if e.HasPrevState {
			b = fmt.Appendf(b, " after %s", roundDuration(e.PrevStateNS))
		}
		b = appendTask(b, " task=", &e.Task)
	case events.KindCloseWait:
		b = append(b, "peer closed"...)
		if !e.AgeKnown {
			b = append(b, " (found at start-up)"...)
		}
	case events.KindStuck:
		b = fmt.Appendf(b, "in CLOSE_WAIT %s", roundDuration(e.AgeNS))
		if !e.AgeKnown {
			b = append(b, " (at least)"...)
		}
	case events.KindAppClose:
		if e.AgeKnown {
			b = fmt.Appendf(b, "closed %s after FIN", roundDuration(e.AgeNS))
		} else {
			b = append(b, "closed"...)
		}
		b = fmt.Appendf(b, " -> %s", e.NewState)
		if e.WasStuck {
			b = append(b, " was_stuck"...)
		}
		if e.HasCloser {
			b = appendTask(b, " by ", &e.Closer)
		}
	case events.KindAbort:
		b = fmt.Appendf(b, "left CLOSE_WAIT without close -> %s", e.NewState)
	}
	if e.Kind != events.KindTransition {
		b = appendOwners(b, e)
	}
	if e.ContainerID != "" {
		b = append(b, " container="...)
		b = append(b, e.ContainerID[:min(12, len(e.ContainerID))]...)
	}
	return b
}

func appendOwners(b []byte, e *events.Event) []byte {
	switch {
	case len(e.Owners) > 0:
		b = append(b, " owner="...)
		for i := range e.Owners {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(e.Owners[i].PID), 10)
			b = append(b, '/')
			b = AppendPrintable(b, []byte(e.Owners[i].Comm))
		}
	case e.OwnerSource == events.OwnerNoFile:
		b = append(b, " owner=none(no file)"...)
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

func roundDuration(ns int64) time.Duration {
	d := time.Duration(ns)
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(time.Microsecond)
	}
	return d
}
