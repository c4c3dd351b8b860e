package tui

import (
	"cmp"
	"slices"
	"strconv"
	"time"

	"github.com/tcptrace/tcptrace/report"
)

// sortKey is a sort order of the rows table, worst first.
type sortKey int

const (
	sortGrowth  sortKey = iota // leak rate: GROWTH/m, then STUCK, then CW (the report's order)
	sortCW                     // CW, then STUCK, then GROWTH/m
	sortStuck                  // STUCK, then CW, then GROWTH/m
	sortOldest                 // OLDEST, then STUCK
	sortP99                    // P99 (rows without closes last), then MAX
	sortExhaust                // EXHAUST soonest (now, then forecasts, unknown, never), then GROWTH/m
	numSortKeys
)

// String is the key's column title, as the header shows it.
func (k sortKey) String() string {
	switch k {
	case sortGrowth:
		return "GROWTH/m"
	case sortCW:
		return "CW"
	case sortStuck:
		return "STUCK"
	case sortOldest:
		return "OLDEST"
	case sortP99:
		return "P99"
	case sortExhaust:
		return "EXHAUST"
	}
	return "?"
}

// next is the key s selects after k (back: S).
func (k sortKey) next(back bool) sortKey {
	if back {
		return (k + numSortKeys - 1) % numSortKeys
	}
	return (k + 1) % numSortKeys
}

// rowKey identifies a row across reports: its workload, port and
// direction. The selection follows it when rows move.
func rowKey(r *report.Row) string {
	w := r.Workload
	return w.Namespace + "\x00" + w.Pod + "\x00" + w.Container + "\x00" + w.Cgroup + "\x00" +
		strconv.Itoa(int(r.Port)) + "\x00" + r.Direction
}

// desc compares for a descending order.
func desc[T cmp.Ordered](a, b T) int { return cmp.Compare(b, a) }

// exhaustRank orders EXHAUST soonest first: a holder out of descriptors
// or at its limit (0),
// forecasts by time, no forecast, never.
func exhaustRank(r *report.Row) (int, time.Duration) {
	switch fmtExhaust(r) {
	case "exhausted", "now":
		return 0, 0
	case "-":
		return 2, 0
	case "never":
		return 3, 0
	}
	return 1, r.Exhaustion
}

// compareRows orders a before b (negative) by key k, ties broken by the
// leak rate and then by the row's key, so the order is total and the
// same across refreshes.
func compareRows(a, b *report.Row, k sortKey) int {
	leak := func() int {
		return cmp.Or(
			desc(a.GrowthPerMinute, b.GrowthPerMinute),
			desc(a.Stuck, b.Stuck),
			desc(a.InCloseWait, b.InCloseWait),
		)
	}
	var c int
	switch k {
	case sortCW:
		c = cmp.Or(desc(a.InCloseWait, b.InCloseWait), desc(a.Stuck, b.Stuck))
	case sortStuck:
		c = cmp.Or(desc(a.Stuck, b.Stuck), desc(a.InCloseWait, b.InCloseWait))
	case sortOldest:
		c = cmp.Or(desc(a.OldestAge, b.OldestAge), desc(a.Stuck, b.Stuck))
	case sortP99:
		c = cmp.Or(desc(b2i(a.Closes > 0), b2i(b.Closes > 0)), desc(a.P99, b.P99), desc(a.Max, b.Max))
	case sortExhaust:
		ra, da := exhaustRank(a)
		rb, db := exhaustRank(b)
		c = cmp.Or(cmp.Compare(ra, rb), cmp.Compare(da, db))
	}
	return cmp.Or(c, leak(), cmp.Compare(workloadName(a.Workload), workloadName(b.Workload)),
		cmp.Compare(rowKey(a), rowKey(b)))
}

// sortRows returns the rows sorted by k (a copy: the report is not
// changed).
func sortRows(rows []report.Row, k sortKey) []report.Row {
	out := slices.Clone(rows)
	slices.SortStableFunc(out, func(a, b report.Row) int { return compareRows(&a, &b, k) })
	return out
}

// sortPeers orders peers by FIN_WAIT2 count, oldest FIN_WAIT2, TIME_WAIT
// count, then address (a copy).
func sortPeers(peers []report.Peer) []report.Peer {
	out := slices.Clone(peers)
	slices.SortStableFunc(out, func(a, b report.Peer) int {
		return cmp.Or(desc(a.FinWait2, b.FinWait2), desc(a.OldestFinWait2, b.OldestFinWait2),
			desc(a.TimeWait, b.TimeWait), cmp.Compare(a.Addr, b.Addr), cmp.Compare(a.NetNS, b.NetNS))
	})
	return out
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
