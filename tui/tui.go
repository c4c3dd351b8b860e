// Package tui is the live view of `tcptrace top`: the leak report (see
// package report) as a table of workloads that refreshes in place, like top
// or htop, with the selected row's FIN-to-close histogram, its CLOSE-WAIT
// history, its diagnosis and holders, and the peers our sockets wait on.
// WriteTable prints one report as plain text, for `top --once`.
package tui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"

	"github.com/tcptrace/tcptrace/report"
)

// Fetch returns the current report (from the local tracer or a remote
// tcptrace).
type Fetch func(ctx context.Context) (report.Report, error)

// Run shows the live view on the terminal (in, out: the tty), refreshing
// every `every` (2s when not positive) by calling fetch, until q or ctrl-c
// (it then returns nil; a SIGINT or SIGTERM too) or ctx ends (it returns
// ctx's error). It runs in the terminal's alternate screen and restores the
// terminal on return. A fetch gets at most max(every, 5s); the next one
// starts `every` after it returned, so that a slow source is never asked
// twice at once. A failed fetch shows in the status line, over the last good
// report.
//
// Keys: q quit, ↑/↓ (k/j) select, PgUp/PgDn, Home/End, s/S cycle the sort
// key forward/back, 1..6 choose it (GROWTH/m, CW, STUCK, OLDEST, P99,
// EXHAUST), r refresh now, ? help.
func Run(ctx context.Context, in io.Reader, out io.Writer, every time.Duration, fetch Fetch) error {
	if every <= 0 {
		every = 2 * time.Second
	}
	// Fetches get a context that ends with Run, so that one under way when
	// the user quits does not outlive the view.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The styles are always on: bubbletea renders them for out's colour
	// profile (none when out is not a terminal or TERM is dumb, no colours
	// with NO_COLOR). The view asks for the alternate screen.
	m := newModel(fctx, every, fetch, newStyles(true))
	p := tea.NewProgram(m, tea.WithInput(in), tea.WithOutput(out))
	// When ctx ends the program quits as on q, not killed (tea.WithContext):
	// a killed program returns before its input reader stopped reading in.
	stop := context.AfterFunc(ctx, p.Quit)
	defer stop()
	_, err := p.Run()
	switch {
	case err != nil && !errors.Is(err, tea.ErrInterrupted):
		return err
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return nil
}

// styles of the view; all plain unless on.
type styles struct {
	header, status, bad, warn, title, selected, faint lipgloss.Style
}

func newStyles(on bool) styles {
	if !on {
		plain := lipgloss.NewStyle()
		return styles{plain, plain, plain, plain, plain, plain, plain}
	}
	return styles{
		header:   lipgloss.NewStyle().Bold(true),
		status:   lipgloss.NewStyle().Faint(true),
		bad:      lipgloss.NewStyle().Foreground(lipgloss.Color("1")),
		warn:     lipgloss.NewStyle().Foreground(lipgloss.Color("3")),
		title:    lipgloss.NewStyle().Bold(true),
		selected: lipgloss.NewStyle().Reverse(true),
		faint:    lipgloss.NewStyle().Faint(true),
	}
}

// fetchedMsg carries a fetch's result.
type fetchedMsg struct {
	rep report.Report
	err error
	at  time.Time
}

// tickMsg starts the next fetch, unless a newer tick or fetch superseded it
// (gen).
type tickMsg struct{ gen int }

// model is the view's state.
type model struct {
	ctx   context.Context
	every time.Duration
	fetch Fetch
	st    styles

	rep   report.Report // the last good report
	have  bool
	rows  []report.Row // rep.Rows in the chosen order
	peers []report.Peer
	// listeners with a queue or drops; their section shows only then.
	listeners []report.Listener
	sort      sortKey

	sel    int    // selected row
	selKey string // its rowKey, to follow it across refreshes
	offset int    // first row shown

	err   error // the last fetch's, if it failed
	errAt time.Time

	gen      int
	inflight bool
	help     bool

	width, height int
}

func newModel(ctx context.Context, every time.Duration, fetch Fetch, st styles) *model {
	return &model{ctx: ctx, every: every, fetch: fetch, st: st, inflight: true}
}

func (m *model) Init() tea.Cmd { return m.fetchCmd() }

func (m *model) fetchCmd() tea.Cmd {
	ctx, fetch := m.ctx, m.fetch
	timeout := max(m.every, 5*time.Second)
	return func() tea.Msg {
		c, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		r, err := fetch(c)
		return fetchedMsg{rep: r, err: err, at: time.Now()}
	}
}

func (m *model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case fetchedMsg:
		m.inflight = false
		if msg.err != nil {
			m.err, m.errAt = msg.err, msg.at
		} else {
			m.err = nil
			m.setReport(msg.rep)
		}
		m.gen++
		gen := m.gen
		return m, tea.Tick(m.every, func(time.Time) tea.Msg { return tickMsg{gen: gen} })
	case tickMsg:
		if msg.gen != m.gen || m.inflight {
			return m, nil
		}
		m.inflight = true
		return m, m.fetchCmd()
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case tea.KeyPressMsg:
		return m, m.key(msg)
	}
	return m, nil
}

// key handles a key press.
func (m *model) key(k tea.KeyPressMsg) tea.Cmd {
	switch s := k.String(); s {
	case "q", "ctrl+c":
		return tea.Quit
	case "up", "k":
		m.selectRow(m.sel - 1)
	case "down", "j":
		m.selectRow(m.sel + 1)
	case "pgup":
		m.selectRow(m.sel - max(m.visibleRows()-1, 1))
	case "pgdown", "space":
		m.selectRow(m.sel + max(m.visibleRows()-1, 1))
	case "home", "g":
		m.selectRow(0)
	case "end", "G":
		m.selectRow(len(m.rows) - 1)
	case "s", "S":
		m.setSort(m.sort.next(s == "S"))
	case "1", "2", "3", "4", "5", "6":
		m.setSort(sortKey(s[0] - '1'))
	case "?", "h":
		m.help = !m.help
	case "esc":
		m.help = false
	case "r":
		if !m.inflight {
			m.inflight = true
			m.gen++ // the pending tick is superseded
			return m.fetchCmd()
		}
	}
	return nil
}

// setReport shows a new report, in the chosen order, keeping the selection
// on the same row (by workload, port and direction) when it is still
// there, else at the same position.
func (m *model) setReport(r report.Report) {
	m.rep, m.have = r, true
	m.rows = sortRows(r.Rows, m.sort)
	m.peers = sortPeers(r.Peers)
	m.listeners = r.Listeners
	m.reselect()
}

// setSort orders the rows by k, keeping the selected row.
func (m *model) setSort(k sortKey) {
	m.sort = k
	m.rows = sortRows(m.rows, k)
	m.reselect()
}

// reselect finds the selected row again after the rows changed.
func (m *model) reselect() {
	if m.selKey != "" {
		if i := slices.IndexFunc(m.rows, func(r report.Row) bool { return rowKey(&r) == m.selKey }); i >= 0 {
			m.sel = i
			return
		}
	}
	m.selectRow(m.sel)
}

// selectRow selects row i (clamped).
func (m *model) selectRow(i int) {
	m.sel = max(min(i, len(m.rows)-1), 0)
	m.selKey = ""
	if m.sel < len(m.rows) {
		m.selKey = rowKey(&m.rows[m.sel])
	}
}

// selected is the selected row, nil without rows.
func (m *model) selected() *report.Row {
	if m.sel < len(m.rows) {
		return &m.rows[m.sel]
	}
	return nil
}

func (m *model) size() (w, h int) {
	w, h = m.width, m.height
	if w <= 0 {
		w = 80
	}
	if h <= 0 {
		h = 24
	}
	return w, h
}

// visibleRows is how many table rows the last layout showed.
func (m *model) visibleRows() int {
	_, h := m.size()
	return m.layout(h).rows
}

// budget is how the screen's lines are shared.
type budget struct {
	rows   int // table rows shown
	detail int // detail lines: blank, title, diagnosis, holders, history, latency title
	hist   int // histogram lines
	peers  int // peers section lines: blank, title, header, peers
	// listeners section lines: blank, title, header, listeners (none
	// without a listener in trouble)
	listeners int
}

const detailBase = 6

// layout shares h lines: the header and status (2), the table header, up
// to 3 rows, the detail, up to 3 histogram lines, the peers (up to the
// first one), then the rest of the histogram, more rows, more peers.
func (m *model) layout(h int) budget {
	var b budget
	left := h - 2 - 1
	nrows := max(len(m.rows), 1)
	take := func(want int) int {
		n := max(min(want, left), 0)
		left -= n
		return n
	}
	nhist := 0
	if r := m.selected(); r != nil {
		nhist = len(histLines(r, 80))
	}
	npeers := 2 // blank, title
	if len(m.peers) > 0 {
		npeers = 3 + len(m.peers) // and the header
	}
	nlisteners := 0
	if len(m.listeners) > 0 {
		nlisteners = 3 + len(m.listeners)
	}
	b.rows = take(min(nrows, 3))
	b.detail = take(detailBase)
	b.hist = take(min(nhist, 3))
	// A listener dropping connections is the outage itself: its first
	// line comes before the peers.
	if nlisteners > 0 && left >= 4 {
		b.listeners = take(4)
	}
	if left >= 2 {
		b.peers = take(min(npeers, 4))
	}
	b.hist += take(nhist - b.hist)
	b.rows += take(nrows - b.rows)
	if b.listeners > 0 {
		b.listeners += take(nlisteners - b.listeners)
	}
	if b.peers > 0 {
		b.peers += take(npeers - b.peers)
	}
	return b
}

// View is the screen, in the alternate screen with the cursor hidden.
func (m *model) View() tea.View {
	v := tea.NewView(m.draw())
	v.AltScreen = true
	return v
}

// draw draws the screen.
func (m *model) draw() string {
	w, h := m.size()
	fit := func(s string) string { return truncEnd(s, w) }
	lines := []string{m.st.header.Render(fit(m.headerLine())), m.statusLine(w)}
	if m.help {
		for _, l := range helpLines {
			lines = append(lines, fit(l))
		}
		return strings.Join(lines[:min(len(lines), h)], "\n")
	}
	if !m.have {
		return strings.Join(lines, "\n")
	}
	b := m.layout(h)

	// The rows table, scrolled to keep the selection in view.
	t := layoutTable(m.rows, w-2)
	lines = append(lines, m.st.title.Render(fit("  "+t.header())))
	if len(m.rows) == 0 {
		lines = append(lines, "  no sockets in CLOSE-WAIT")
	} else {
		if m.sel < m.offset {
			m.offset = m.sel
		}
		if m.sel >= m.offset+b.rows {
			m.offset = m.sel - b.rows + 1
		}
		m.offset = max(min(m.offset, len(m.rows)-b.rows), 0)
		for i := m.offset; i < len(m.rows) && i < m.offset+b.rows; i++ {
			if i == m.sel {
				lines = append(lines, "▶ "+m.st.selected.Render(pad(truncEnd(t.line(i), w-2), w-2, false)))
				continue
			}
			lines = append(lines, fit("  "+t.styledLine(i, m.cellStyle(&m.rows[i]))))
		}
	}

	// The selected row's detail.
	var detail []string
	if r := m.selected(); r != nil {
		detail = append(detail, "",
			m.st.title.Render(fit(detailTitle(r))),
			fit(diagnosisLine(r)),
			fit(holdersLine(r)),
			fit(historyLine(r, w)),
			fit(latencyTitle(r)))
		detail = detail[:min(len(detail), b.detail)]
		hist := histLines(r, w)
		if len(hist) > b.hist {
			if b.hist > 0 {
				hist = append(hist[:b.hist-1], fmt.Sprintf("  … %d more buckets (a taller terminal shows them)", len(hist)-b.hist+1))
			} else {
				hist = nil
			}
		}
		for _, l := range hist {
			detail = append(detail, fit(l))
		}
	}
	lines = append(lines, detail...)

	// The listeners in trouble.
	if b.listeners > 0 {
		ls := []string{"", m.st.title.Render(fit(listenersTitle))}
		for _, l := range listenerLines(m.listeners) {
			ls = append(ls, fit("  "+l))
		}
		lines = append(lines, ls[:min(len(ls), b.listeners)]...)
	}

	// The peers.
	var peers []string
	if len(m.peers) == 0 {
		peers = []string{"", m.st.title.Render(fit(noPeers))}
	} else {
		peers = []string{"", m.st.title.Render(fit(peersTitle))}
		for _, l := range peerLines(m.peers) {
			peers = append(peers, fit("  "+l))
		}
	}
	lines = append(lines, peers[:min(len(peers), b.peers)]...)
	return strings.Join(lines[:min(len(lines), h)], "\n")
}

// cellStyle colours the cells that call for action: a growing row, stuck
// sockets, a holder about to run out of descriptors.
func (m *model) cellStyle(r *report.Row) func(c int, s string) string {
	return func(c int, s string) string {
		switch columns[c].title {
		case "GROWTH/m":
			if r.GrowthPerMinute >= 0.05 {
				return m.st.bad.Render(s)
			}
		case "STUCK":
			if r.Stuck > 0 {
				return m.st.warn.Render(s)
			}
		case "EXHAUST":
			if e := fmtExhaust(r); e == "now" || (e != "never" && e != "-" && r.Exhaustion < time.Hour) {
				return m.st.bad.Render(s)
			}
		}
		return s
	}
}

// headerLine is the first line: when, how far back, how many rows, the
// sort key and the keys.
func (m *model) headerLine() string {
	var b strings.Builder
	b.WriteString("tcptrace top")
	if m.have {
		fmt.Fprintf(&b, " %s  window %s  %d rows", m.rep.Time.Format("15:04:05"), fmtDur(m.rep.Window), len(m.rep.Rows))
	}
	fmt.Fprintf(&b, "  sort %s↓ │ q quit ↑/↓ select s/S/1-6 sort ? help", m.sort)
	return b.String()
}

// statusLine is the second line: a failed fetch, else the sort keys.
func (m *model) statusLine(w int) string {
	switch {
	case m.err != nil:
		s := fmt.Sprintf("fetch failed at %s: %v", m.errAt.Format("15:04:05"), m.err)
		if m.have {
			s += "; showing the report of " + m.rep.Time.Format("15:04:05")
		}
		return m.st.bad.Render(truncEnd(sanitize(s), w))
	case !m.have:
		return m.st.status.Render(truncEnd("waiting for the first report…", w))
	}
	var b strings.Builder
	b.WriteString("sort by:")
	for k := range numSortKeys {
		mark := ""
		if k == m.sort {
			mark = "*"
		}
		fmt.Fprintf(&b, " %d %s%s", k+1, k, mark)
	}
	fmt.Fprintf(&b, "   refresh every %s", fmtDur(m.every))
	return m.st.status.Render(truncEnd(b.String(), w))
}

var helpLines = []string{
	"",
	"keys",
	"  q, ctrl-c     quit",
	"  ↑/↓, k/j      select a row (PgUp/PgDn, Home/End)",
	"  s / S         next / previous sort key",
	"  1..6          sort by GROWTH/m, CW, STUCK, OLDEST, P99, EXHAUST",
	"  r             refresh now",
	"  ?, esc        this help",
	"",
	"columns",
	"  WORKLOAD      namespace/pod/container, or the cgroup (systemd unit, runtime:container id)",
	"  PORT, DIR     the service port; in: we accepted, out: we connected",
	"  CW, STUCK     sockets in CLOSE-WAIT now, and those past the stuck threshold",
	"  NEW/m, CLOSE/m, GROWTH/m   per minute over the window: entered CLOSE-WAIT, closed, net growth",
	"  OLDEST        longest in CLOSE-WAIT (>: it predates tcptrace, a lower bound)",
	"  P50..MAX      FIN→close latency (the peer's FIN to our close), since tcptrace started",
	"  FDS           open/limit descriptors of the first holder",
	"  EXHAUST       when a holder runs out of descriptors at this growth",
	"  HOLDERS       pid/comm of the processes holding the stuck sockets",
}
