package tui

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"github.com/charmbracelet/x/ansi"

	"github.com/tcptrace/tcptrace/report"
)

// testModel is a model with plain styles, of w×h, showing r.
func testModel(w, h int, r *report.Report) *model {
	m := newModel(context.Background(), time.Second, nil, newStyles(false))
	m.Update(tea.WindowSizeMsg{Width: w, Height: h})
	if r != nil {
		m.Update(fetchedMsg{rep: *r, at: r.Time})
	}
	return m
}

// key is the key press named k, as the terminal's input decoder makes it.
func key(k string) tea.KeyPressMsg {
	switch k {
	case "up":
		return tea.KeyPressMsg{Code: tea.KeyUp}
	case "down":
		return tea.KeyPressMsg{Code: tea.KeyDown}
	case "pgup":
		return tea.KeyPressMsg{Code: tea.KeyPgUp}
	case "pgdown":
		return tea.KeyPressMsg{Code: tea.KeyPgDown}
	case "end":
		return tea.KeyPressMsg{Code: tea.KeyEnd}
	case "home":
		return tea.KeyPressMsg{Code: tea.KeyHome}
	case "esc":
		return tea.KeyPressMsg{Code: tea.KeyEscape}
	case "space":
		return tea.KeyPressMsg{Code: tea.KeySpace, Text: " "}
	case "ctrl+c":
		return tea.KeyPressMsg{Code: 'c', Mod: tea.ModCtrl}
	}
	r := []rune(k)
	if len(r) != 1 {
		panic("key " + k)
	}
	return tea.KeyPressMsg{Code: r[0], Text: k}
}

func press(m *model, keys ...string) {
	for _, k := range keys {
		if got := key(k).String(); got != k {
			panic(fmt.Sprintf("key %q reads %q", k, got))
		}
		m.Update(key(k))
	}
}

// view is the model's screen.
func view(m *model) string {
	v := m.View()
	if !v.AltScreen || v.Cursor != nil {
		panic(fmt.Sprintf("view: alternate screen %v, cursor %v", v.AltScreen, v.Cursor))
	}
	return v.Content
}

func names(rows []report.Row) []string {
	out := make([]string, len(rows))
	for i := range rows {
		out[i] = workloadName(rows[i].Workload)
	}
	return out
}

func sel(m *model) string {
	if r := m.selected(); r != nil {
		return workloadName(r.Workload)
	}
	return ""
}

const (
	api     = "shop/api-7d9f8b6c5-x2x4q/server"
	nginx   = "nginx.service"
	billing = "billing/invoicer-0/app"
)

func TestSortKeys(t *testing.T) {
	rows := sampleReport(1).Rows
	for _, c := range []struct {
		k    sortKey
		want []string
	}{
		{sortGrowth, []string{api, nginx, billing}},
		{sortCW, []string{api, nginx, billing}},
		{sortStuck, []string{api, nginx, billing}},
		{sortOldest, []string{nginx, api, billing}},
		{sortP99, []string{billing, nginx, api}},
		{sortExhaust, []string{api, nginx, billing}},
	} {
		if got := names(sortRows(rows, c.k)); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("sort %s: %v, want %v", c.k, got, c.want)
		}
	}
	// Ties: growth, then stuck, then in CLOSE-WAIT, then the name.
	tie := []report.Row{
		{Workload: report.Workload{Cgroup: "/b.service"}, GrowthPerMinute: 1, Stuck: 1, InCloseWait: 5},
		{Workload: report.Workload{Cgroup: "/a.service"}, GrowthPerMinute: 1, Stuck: 1, InCloseWait: 5},
		{Workload: report.Workload{Cgroup: "/c.service"}, GrowthPerMinute: 1, Stuck: 1, InCloseWait: 9},
		{Workload: report.Workload{Cgroup: "/d.service"}, GrowthPerMinute: 1, Stuck: 2, InCloseWait: 1},
		{Workload: report.Workload{Cgroup: "/e.service"}, GrowthPerMinute: 2},
	}
	if got := fmt.Sprint(names(sortRows(tie, sortGrowth))); got != "[e.service d.service c.service a.service b.service]" {
		t.Errorf("ties: %s", got)
	}
	// EXHAUST: now, then the soonest forecast, then none, then never.
	ex := []report.Row{
		{Workload: report.Workload{Cgroup: "/never.service"}, ExhaustionNever: true},
		{Workload: report.Workload{Cgroup: "/unknown.service"}},
		{Workload: report.Workload{Cgroup: "/later.service"}, Exhaustion: time.Hour},
		{Workload: report.Workload{Cgroup: "/now.service"}, Holders: []report.Holder{{OpenFDs: 10, FDLimit: 10}}},
		{Workload: report.Workload{Cgroup: "/soon.service"}, Exhaustion: time.Minute},
	}
	if got := fmt.Sprint(names(sortRows(ex, sortExhaust))); got != "[now.service soon.service later.service unknown.service never.service]" {
		t.Errorf("exhaust: %s", got)
	}
}

func TestSortKeyCycle(t *testing.T) {
	m := testModel(100, 30, nil)
	var seen []string
	for range numSortKeys + 1 {
		seen = append(seen, m.sort.String())
		press(m, "s")
	}
	if got := strings.Join(seen, " "); got != "GROWTH/m CW STUCK OLDEST P99 EXHAUST GROWTH/m" {
		t.Errorf("s cycles: %s", got)
	}
	press(m, "1", "S")
	if m.sort != sortExhaust {
		t.Errorf("S from GROWTH/m: %s", m.sort)
	}
	for i, want := range []sortKey{sortGrowth, sortCW, sortStuck, sortOldest, sortP99, sortExhaust} {
		press(m, fmt.Sprint(i+1))
		if m.sort != want {
			t.Errorf("key %d: sort %s, want %s", i+1, m.sort, want)
		}
	}
	press(m, "7")
	if m.sort != sortExhaust {
		t.Errorf("7 changed the sort key to %s", m.sort)
	}
}

// The chosen sort key stays across refreshes, and the selection stays on
// its row when rows move; it stays in place when its row goes.
func TestSortAndSelectionAcrossRefreshes(t *testing.T) {
	r := sampleReport(1)
	m := testModel(100, 30, &r)
	if sel(m) != api {
		t.Fatalf("first selected: %q", sel(m))
	}
	press(m, "down")
	if sel(m) != nginx {
		t.Fatalf("after ↓: %q", sel(m))
	}
	press(m, "4") // OLDEST: nginx first
	if got := names(m.rows); fmt.Sprint(got) != fmt.Sprint([]string{nginx, api, billing}) || m.sel != 0 || sel(m) != nginx {
		t.Fatalf("sorted by OLDEST: %v, selected %d %q", got, m.sel, sel(m))
	}

	// A refresh where the api is older than nginx: the order changes,
	// the sort key and the selected row stay.
	r2 := sampleReport(2)
	r2.Rows[0].OldestAge = 5 * time.Hour
	m.Update(fetchedMsg{rep: r2})
	if m.sort != sortOldest {
		t.Errorf("sort key after a refresh: %s", m.sort)
	}
	if got := names(m.rows); fmt.Sprint(got) != fmt.Sprint([]string{api, nginx, billing}) {
		t.Errorf("rows after the refresh: %v", got)
	}
	if sel(m) != nginx || m.sel != 1 {
		t.Errorf("selection after the rows moved: %d %q, want 1 nginx", m.sel, sel(m))
	}
	if !strings.Contains(view(m), "▶ nginx.service") {
		t.Errorf("view: not nginx selected:\n%s", view(m))
	}

	// nginx goes: the selection stays at its place.
	r3 := sampleReport(3)
	r3.Rows[0].OldestAge = 5 * time.Hour
	r3.Rows = append(r3.Rows[:1], r3.Rows[2])
	m.Update(fetchedMsg{rep: r3})
	if m.sel != 1 || sel(m) != billing {
		t.Errorf("after the selected row went: %d %q", m.sel, sel(m))
	}
	// All rows go, then come back.
	m.Update(fetchedMsg{rep: report.Report{Time: base}})
	if m.selected() != nil || !strings.Contains(view(m), "no sockets in CLOSE-WAIT") {
		t.Errorf("without rows: selected %v\n%s", m.selected(), view(m))
	}
	m.Update(fetchedMsg{rep: sampleReport(4)})
	if m.selected() == nil {
		t.Error("nothing selected when rows came back")
	}
}

func TestNavigation(t *testing.T) {
	r := sampleReport(1)
	for i := range 40 {
		row := r.Rows[2]
		row.Workload = report.Workload{Cgroup: fmt.Sprintf("/system.slice/svc%02d.service", i)}
		row.InCloseWait = uint64(i)
		r.Rows = append(r.Rows, row)
	}
	m := testModel(100, 30, &r)
	press(m, "up")
	if m.sel != 0 {
		t.Errorf("↑ on the first row: %d", m.sel)
	}
	press(m, "end")
	if m.sel != len(r.Rows)-1 {
		t.Errorf("End: %d", m.sel)
	}
	v := view(m)
	if !strings.Contains(v, "▶ "+sel(m)) {
		t.Errorf("the last row selected is not in view:\n%s", v)
	}
	press(m, "down")
	if m.sel != len(r.Rows)-1 {
		t.Errorf("↓ on the last row: %d", m.sel)
	}
	press(m, "home", "j", "j", "k")
	if m.sel != 1 {
		t.Errorf("Home j j k: %d", m.sel)
	}
	// A page is what the screen shows but one row, with the layout of the
	// selection at the key press.
	press(m, "home")
	for _, c := range []struct {
		k    string
		sign int
	}{{"pgdown", 1}, {"space", 1}, {"pgup", -1}} {
		page := m.visibleRows() - 1
		if page < 2 {
			t.Fatalf("%d rows on a page", page+1)
		}
		want := m.sel + c.sign*page
		press(m, c.k)
		if m.sel != want {
			t.Errorf("%s: %d, want %d", c.k, m.sel, want)
		}
	}
	press(m, "G")
	if m.sel != len(r.Rows)-1 {
		t.Errorf("G: %d", m.sel)
	}
	press(m, "g")
	if m.sel != 0 {
		t.Errorf("g: %d", m.sel)
	}
}

// The live view's styles: the same text, with the header bold, the
// selected row reversed, the growing row's GROWTH/m red.
func TestStyledView(t *testing.T) {
	r := sampleReport(1)
	plain := testModel(100, 30, &r)
	styled := newModel(context.Background(), time.Second, nil, newStyles(true))
	styled.Update(tea.WindowSizeMsg{Width: 100, Height: 30})
	styled.Update(fetchedMsg{rep: r, at: r.Time})
	p, s := view(plain), view(styled)
	if strings.Contains(p, "\x1b") {
		t.Errorf("plain view with escapes:\n%q", p)
	}
	if got := ansi.Strip(s); got != p {
		t.Errorf("styled view's text:\n%s\nwant:\n%s", got, p)
	}
	lines := strings.Split(s, "\n")
	for _, c := range []struct{ what, line, sgr string }{
		{"header bold", lines[0], "\x1b[1m"},
		{"selected row reversed", lines[lineIndex(lines, "▶ ")], "\x1b[7m"},
		{"growth red", lines[lineIndex(lines, "▶ ")+1], "\x1b[31m"},
	} {
		if !strings.Contains(c.line, c.sgr) {
			t.Errorf("%s: no %q in %q", c.what, c.sgr, c.line)
		}
	}
}

func TestQuitKeys(t *testing.T) {
	for _, k := range []string{"q", "ctrl+c"} {
		m := testModel(100, 30, nil)
		_, cmd := m.Update(key(k))
		if cmd == nil {
			t.Fatalf("%s: no command", k)
		}
		if _, ok := cmd().(tea.QuitMsg); !ok {
			t.Errorf("%s: not quit", k)
		}
		// Releases (reported only on request) do nothing.
		if _, cmd := m.Update(tea.KeyReleaseMsg(key(k))); cmd != nil {
			t.Errorf("%s released: a command", k)
		}
	}
}

// A failed fetch shows in the status line over the last good report; the
// next good one clears it.
func TestFetchError(t *testing.T) {
	r := sampleReport(1)
	m := testModel(100, 30, &r)
	m.Update(fetchedMsg{err: errors.New("dial tcp 10.0.0.1:9090: connection refused"), at: base.Add(time.Minute)})
	v := strings.Split(view(m), "\n")
	if !strings.HasPrefix(v[1], "fetch failed at 12:01:00: dial tcp 10.0.0.1:9090: connection refused; showing the report of 12:00:01") {
		t.Errorf("status: %q", v[1])
	}
	if !strings.Contains(strings.Join(v, "\n"), "▶ shop/api") {
		t.Errorf("the last report is gone:\n%s", strings.Join(v, "\n"))
	}
	m.Update(fetchedMsg{rep: sampleReport(2)})
	if v := view(m); strings.Contains(v, "fetch failed") || !strings.Contains(v, "12:00:02") {
		t.Errorf("after a good fetch:\n%s", v)
	}
	// Before any report.
	m = testModel(100, 30, nil)
	m.Update(fetchedMsg{err: errors.New("no tracer"), at: base})
	if v := view(m); !strings.Contains(v, "fetch failed at 12:00:00: no tracer") || strings.Contains(v, "showing") {
		t.Errorf("first fetch failed:\n%s", v)
	}
}

// The refresh loop: a fetch, then a tick `every` later, then a fetch; a
// stale tick, or one while a fetch runs, does nothing; r fetches now.
func TestRefreshLoop(t *testing.T) {
	calls := 0
	m := newModel(context.Background(), time.Second, func(context.Context) (report.Report, error) {
		calls++
		return sampleReport(calls), nil
	}, newStyles(false))
	msg := m.Init()()
	if calls != 1 {
		t.Fatalf("Init: %d fetches", calls)
	}
	_, tick := m.Update(msg)
	if tick == nil || m.inflight {
		t.Fatal("no tick after a fetch")
	}
	gen := m.gen
	if _, cmd := m.Update(tickMsg{gen: gen - 1}); cmd != nil {
		t.Error("a stale tick fetched")
	}
	_, fetch := m.Update(tickMsg{gen: gen})
	if fetch == nil || !m.inflight {
		t.Fatal("the tick did not fetch")
	}
	if _, cmd := m.Update(tickMsg{gen: gen}); cmd != nil {
		t.Error("a second fetch while one runs")
	}
	press(m, "r")
	if calls != 1 {
		t.Error("r fetched while a fetch runs")
	}
	m.Update(fetch())
	if calls != 2 || m.rep.Time != sampleReport(2).Time {
		t.Errorf("after the second fetch: %d calls, report of %v", calls, m.rep.Time)
	}
	_, cmd := m.Update(key("r"))
	if cmd == nil || !m.inflight {
		t.Fatal("r did not fetch")
	}
	if _, c := m.Update(tickMsg{gen: m.gen - 1}); c != nil {
		t.Error("the tick r superseded fetched")
	}
	m.Update(cmd())
	if calls != 3 {
		t.Errorf("%d fetches, want 3", calls)
	}
}

// The view fits the terminal, whatever its size, and follows a resize.
func TestViewFits(t *testing.T) {
	r := sampleReport(1)
	for _, sz := range [][2]int{{200, 60}, {120, 40}, {100, 30}, {80, 24}, {60, 15}, {40, 10}, {20, 5}} {
		m := testModel(sz[0], sz[1], &r)
		for _, help := range []bool{false, true} {
			m.help = help
			lines := strings.Split(view(m), "\n")
			if len(lines) > sz[1] {
				t.Errorf("%dx%d help %v: %d lines", sz[0], sz[1], help, len(lines))
			}
			for _, l := range lines {
				if w := cellWidth(l); w > sz[0] {
					t.Errorf("%dx%d help %v: line of %d cells: %q", sz[0], sz[1], help, w, l)
				}
			}
		}
	}
	m := testModel(80, 24, &r)
	if strings.Contains(view(m), "CLOSE/m") {
		t.Error("CLOSE/m on 80 columns")
	}
	m.Update(tea.WindowSizeMsg{Width: 100, Height: 30})
	if !strings.Contains(view(m), "CLOSE/m") {
		t.Errorf("no CLOSE/m on 100 columns:\n%s", view(m))
	}
	// On 100x30, every histogram bucket of the selected row and the peers show.
	v := view(m)
	for _, w := range []string{"≤ 2.0ms │", "≤ 2.1s │", "10.0.3.7:8443", "192.168.1.20:443", peersTitle} {
		if !strings.Contains(v, w) {
			t.Errorf("no %q on 100x30:\n%s", w, v)
		}
	}
	// On 100x20, the table, the detail and the peers share the lines.
	m.Update(tea.WindowSizeMsg{Width: 100, Height: 20})
	v = view(m)
	for _, w := range []string{"▶ shop/api", "  billing/", "FIN→close latency", "≤ 2.0ms │", "more buckets", peersTitle, "10.0.3.7:8443"} {
		if !strings.Contains(v, w) {
			t.Errorf("no %q on 100x20:\n%s", w, v)
		}
	}
	t.Logf("100x20:\n%s", v)
}

func TestHelp(t *testing.T) {
	r := sampleReport(1)
	m := testModel(100, 30, &r)
	press(m, "?")
	if v := view(m); !strings.Contains(v, "1..6          sort by GROWTH/m, CW, STUCK, OLDEST, P99, EXHAUST") {
		t.Errorf("help:\n%s", v)
	}
	press(m, "esc")
	if m.help {
		t.Error("esc did not close the help")
	}
}
