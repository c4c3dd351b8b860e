package tui

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/report"
)

// column is one column of the rows table.
type column struct {
	title string
	right bool // right-aligned (numbers)
	// drop orders the columns left out when the table is too wide: the
	// lowest first (HOLDERS: the detail lists them); 0 never.
	drop int
	cell func(r *report.Row) string
}

const colWorkload = 0

// columns of the rows table, in order.
var columns = []column{
	{title: "WORKLOAD", cell: func(r *report.Row) string { return sanitize(workloadName(r.Workload)) }},
	{title: "PORT", right: true, cell: func(r *report.Row) string { return strconv.Itoa(int(r.Port)) }},
	{title: "DIR", cell: func(r *report.Row) string { return sanitize(shortDir(r.Direction)) }},
	{title: "CW", right: true, cell: func(r *report.Row) string { return strconv.FormatUint(r.InCloseWait, 10) }},
	{title: "STUCK", right: true, cell: func(r *report.Row) string { return strconv.Itoa(r.Stuck) }},
	{title: "NEW/m", right: true, drop: 6, cell: func(r *report.Row) string { return fmtRate(r.NewPerMinute, false) }},
	{title: "CLOSE/m", right: true, drop: 5, cell: func(r *report.Row) string { return fmtRate(r.ClosesPerMinute, false) }},
	{title: "GROWTH/m", right: true, cell: func(r *report.Row) string { return fmtRate(r.GrowthPerMinute, true) }},
	{title: "OLDEST", right: true, cell: fmtOldest},
	{title: "P50", right: true, drop: 3, cell: func(r *report.Row) string { return quantile(r, r.P50) }},
	{title: "P90", right: true, drop: 2, cell: func(r *report.Row) string { return quantile(r, r.P90) }},
	{title: "P99", right: true, cell: func(r *report.Row) string { return quantile(r, r.P99) }},
	{title: "MAX", right: true, drop: 4, cell: func(r *report.Row) string { return quantile(r, r.Max) }},
	{title: "FDS", right: true, drop: 7, cell: func(r *report.Row) string {
		if len(r.Holders) == 0 {
			return "-"
		}
		return fmtFDs(r.Holders[0])
	}},
	{title: "EXHAUST", right: true, cell: fmtExhaust},
	{title: "HOLDERS", drop: 1, cell: func(r *report.Row) string { return sanitize(fmtHolders(r.Holders)) }},
}

func quantile(r *report.Row, d time.Duration) string {
	if r.Closes == 0 {
		return "-"
	}
	return fmtLatency(d)
}

const (
	gap         = 1  // between columns
	minWorkload = 20 // the workload column is cut to this before any column goes
	tinyWork    = 8  // and further only when all droppable columns went
)

// table is the rows table laid out for a width: the columns shown (indexes
// into columns), their widths, and every row's cells.
type table struct {
	rows   []report.Row
	cols   []int
	widths []int
	cells  [][]string // per row, per column (all columns)
}

// layoutTable lays rows out in width cells (0: no limit). It cuts the
// workload column first (to minWorkload), then leaves columns out (HOLDERS,
// P90, P50, MAX, CLOSE/m, NEW/m, FDS), then cuts the workload further.
func layoutTable(rows []report.Row, width int) table {
	t := table{rows: rows, cells: make([][]string, len(rows))}
	natural := make([]int, len(columns))
	for c := range columns {
		natural[c] = len(columns[c].title)
	}
	for i := range rows {
		t.cells[i] = make([]string, len(columns))
		for c := range columns {
			s := columns[c].cell(&rows[i])
			t.cells[i][c] = s
			if w := cellWidth(s); w > natural[c] {
				natural[c] = w
			}
		}
	}
	shown := make([]bool, len(columns))
	for c := range shown {
		shown[c] = true
	}
	total := func(work int) int {
		n, k := 0, 0
		for c := range columns {
			if !shown[c] {
				continue
			}
			if k++; k > 1 {
				n += gap
			}
			if c == colWorkload {
				n += work
			} else {
				n += natural[c]
			}
		}
		return n
	}
	work := natural[colWorkload]
	if width > 0 && total(work) > width {
		// The workload column takes what the others leave, down to
		// minWorkload.
		floor := min(work, minWorkload)
		for total(floor) > width {
			next := -1
			for c := range columns {
				if shown[c] && columns[c].drop != 0 && (next < 0 || columns[c].drop < columns[next].drop) {
					next = c
				}
			}
			if next < 0 {
				break
			}
			shown[next] = false
		}
		work = max(min(natural[colWorkload], width-total(0)), min(natural[colWorkload], tinyWork))
	}
	for c := range columns {
		if shown[c] {
			t.cols = append(t.cols, c)
			if c == colWorkload {
				t.widths = append(t.widths, work)
			} else {
				t.widths = append(t.widths, natural[c])
			}
		}
	}
	return t
}

// header is the table's title line.
func (t *table) header() string {
	var b strings.Builder
	for i, c := range t.cols {
		if i > 0 {
			b.WriteString(strings.Repeat(" ", gap))
		}
		b.WriteString(pad(columns[c].title, t.widths[i], columns[c].right))
	}
	return strings.TrimRight(b.String(), " ")
}

// line is row i's line, its cells cut and padded to the column widths.
func (t *table) line(i int) string { return t.styledLine(i, nil) }

// styledLine is line with each padded cell passed through style (when not
// nil) with its column index.
func (t *table) styledLine(i int, style func(c int, s string) string) string {
	var b strings.Builder
	for j, c := range t.cols {
		if j > 0 {
			b.WriteString(strings.Repeat(" ", gap))
		}
		s := t.cells[i][c]
		if c == colWorkload {
			s = fitWorkload(t.rows[i].Workload, t.widths[j])
		} else {
			s = truncEnd(s, t.widths[j])
		}
		s = pad(s, t.widths[j], columns[c].right)
		if style != nil {
			s = style(c, s)
		}
		b.WriteString(s)
	}
	if style != nil {
		return b.String()
	}
	return strings.TrimRight(b.String(), " ")
}

// peersTitle heads the peers section (80 cells); noPeers replaces it
// without peers.
const (
	peersTitle = "our sockets waiting on the peer to close (FIN_WAIT2): a leaking server elsewhere"
	noPeers    = "no socket of ours waits on a peer to close (FIN_WAIT2)"
)

// sectionColumn is a column of a section below the rows table.
type sectionColumn struct {
	title string
	right bool
}

var peerColumns = []sectionColumn{
	{"PEER", false}, {"NETNS", true}, {"FIN_WAIT2", true}, {"TIME_WAIT", true}, {"OLDEST FIN_WAIT2", true},
}

// peerLines lays the peers out: the header line, then one line per peer.
func peerLines(peers []report.Peer) []string {
	cells := make([][]string, len(peers))
	for i, p := range peers {
		oldest := "-"
		if p.OldestFinWait2 > 0 {
			oldest = fmtDur(p.OldestFinWait2)
		}
		cells[i] = []string{
			sanitize(p.Addr),
			strconv.FormatUint(uint64(p.NetNS), 10),
			strconv.Itoa(p.FinWait2),
			strconv.Itoa(p.TimeWait),
			oldest,
		}
	}
	return sectionLines(peerColumns, cells)
}

// sectionLines lays a section's cells out in columns two spaces apart:
// the header line, then one line per row.
func sectionLines(cols []sectionColumn, cells [][]string) []string {
	widths := make([]int, len(cols))
	for c, col := range cols {
		widths[c] = cellWidth(col.title)
	}
	for _, row := range cells {
		for c, s := range row {
			widths[c] = max(widths[c], cellWidth(s))
		}
	}
	join := func(cs []string) string {
		var b strings.Builder
		for c, s := range cs {
			if c > 0 {
				b.WriteString("  ")
			}
			b.WriteString(pad(s, widths[c], cols[c].right))
		}
		return strings.TrimRight(b.String(), " ")
	}
	titles := make([]string, len(cols))
	for c, col := range cols {
		titles[c] = col.title
	}
	lines := []string{join(titles)}
	for _, cs := range cells {
		lines = append(lines, join(cs))
	}
	return lines
}

// listenersTitle heads the listeners section, shown only when a listener
// has connections waiting or dropped some within the window.
const listenersTitle = "listeners with connections waiting or dropped: clients hang or time out"

var listenerColumns = []sectionColumn{
	{"LISTENER", false}, {"NETNS", true}, {"WORKLOAD", false}, {"QUEUE", true}, {"DROPS", true}, {"DROPS/m", true},
}

// listenerLines lays the listeners out: the header line, then one line
// per listener.
func listenerLines(ls []report.Listener) []string {
	cells := make([][]string, len(ls))
	for i, l := range ls {
		cells[i] = []string{
			sanitize(l.Addr),
			strconv.FormatUint(uint64(l.NetNS), 10),
			sanitize(workloadName(l.Workload)),
			fmt.Sprintf("%d/%d", l.Queue, l.Limit),
			strconv.FormatUint(l.Drops, 10),
			strconv.FormatFloat(l.DropsPerMinute, 'f', 1, 64),
		}
	}
	return sectionLines(listenerColumns, cells)
}

// summary is the one-line description of a report.
func summary(r report.Report) string {
	n := len(r.Rows)
	rows := strconv.Itoa(n) + " rows"
	if n == 1 {
		rows = "1 row"
	}
	return r.Time.Format(time.RFC3339) + "  window " + fmtDur(r.Window) + "  " + rows
}

// WriteTable writes one report as plain text (no escape codes) for `top
// --once`: a summary line, the rows table (sorted by leak rate: growth, then
// stuck, then in CLOSE-WAIT) and the peers section, every line fitted to
// width cells (0: no limit).
func WriteTable(w io.Writer, r report.Report, width int) error {
	bw := bufio.NewWriter(w)
	put := func(s string) {
		if width > 0 {
			s = truncEnd(s, width)
		}
		bw.WriteString(s)
		bw.WriteByte('\n')
	}
	put(summary(r))
	put("")
	if len(r.Rows) == 0 {
		put("no sockets in CLOSE-WAIT")
	} else {
		rows := sortRows(r.Rows, sortGrowth)
		t := layoutTable(rows, width)
		put(t.header())
		for i := range rows {
			put(t.line(i))
		}
	}
	if len(r.Listeners) > 0 {
		put("")
		put(listenersTitle)
		for _, l := range listenerLines(r.Listeners) {
			put(l)
		}
		if r.ListenersOmitted > 0 {
			put(fmt.Sprintf("and %d more listeners not shown", r.ListenersOmitted))
		}
	}
	put("")
	if len(r.Peers) == 0 {
		put(noPeers)
	} else {
		put(peersTitle)
		for _, l := range peerLines(sortPeers(r.Peers)) {
			put(l)
		}
		if r.PeersOmitted > 0 {
			put(fmt.Sprintf("and %d more peers not shown", r.PeersOmitted))
		}
	}
	return bw.Flush()
}
