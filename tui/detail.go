package tui

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/tcptrace/tcptrace/report"
)

// sparkline draws values as ▁▂▃▄▅▆▇█ from 0 (▁) to their maximum (█),
// the last n when there are more.
func sparkline(vs []uint64, n int) string {
	if n <= 0 || len(vs) == 0 {
		return ""
	}
	if len(vs) > n {
		vs = vs[len(vs)-n:]
	}
	const levels = "▁▂▃▄▅▆▇█"
	ls := []rune(levels)
	var top uint64
	for _, v := range vs {
		top = max(top, v)
	}
	var b strings.Builder
	for _, v := range vs {
		i := 0
		if top > 0 {
			i = int((v*uint64(len(ls)-1) + top/2) / top)
		}
		b.WriteRune(ls[i])
	}
	return b.String()
}

// bar draws a horizontal bar of frac (0..1) of n cells, in eighths; a
// non-zero value gets at least ▏.
func bar(frac float64, n int) string {
	if n <= 0 || frac <= 0 {
		return ""
	}
	eighths := int(frac*float64(n*8) + 0.5)
	eighths = max(eighths, 1)
	eighths = min(eighths, n*8)
	partial := []string{"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"}
	return strings.Repeat("█", eighths/8) + partial[eighths%8]
}

// histLines draws a row's FIN-to-close histogram, one line per non-empty
// log2 bucket: its bound, a bar scaled to the fullest bucket, the count
// and its share, in width cells (0: 80).
func histLines(r *report.Row, w int) []string {
	if w <= 0 {
		w = 80
	}
	var top, total uint64
	var labelW, countW int
	for i, n := range r.Hist {
		if n == 0 {
			continue
		}
		top = max(top, n)
		total += n
		labelW = max(labelW, cellWidth(bucketLabel(i)))
		countW = max(countW, len(strconv.FormatUint(n, 10)))
	}
	if total == 0 {
		return nil
	}
	// "  ≤ 4.1ms │bar  count  42%"
	barW := max(w-(2+labelW+2+2+countW+2+4), 4)
	var lines []string
	for i, n := range r.Hist {
		if n == 0 {
			continue
		}
		b := bar(float64(n)/float64(top), barW)
		pct := fmt.Sprintf("%3.0f%%", 100*float64(n)/float64(total))
		lines = append(lines, "  "+pad(bucketLabel(i), labelW, true)+" │"+pad(b, barW, false)+"  "+
			pad(strconv.FormatUint(n, 10), countW, true)+"  "+pct)
	}
	return lines
}

// detailTitle names the selected row and sums it up.
func detailTitle(r *report.Row) string {
	oldest := ""
	if r.OldestAge > 0 {
		oldest = ", oldest " + fmtOldest(r)
	}
	return fmt.Sprintf("%s :%d %s: %d in CLOSE-WAIT, %d stuck, %s/min%s",
		sanitize(workloadName(r.Workload)), r.Port, sanitize(r.Direction), r.InCloseWait, r.Stuck,
		fmtRate(r.GrowthPerMinute, true), oldest)
}

// diagnosisLine says why the row's sockets are stuck.
func diagnosisLine(r *report.Row) string {
	return fmt.Sprintf("why stuck: %d read EOF, never closed (close-path bug) · %d never read (abandoned), %d with unread data",
		r.ReadEOF, r.NeverRead, r.UnreadData)
}

// holdersLine lists the row's holders with their descriptors, and when
// they run out.
func holdersLine(r *report.Row) string {
	exhaust := "fds run out: " + fmtExhaust(r)
	if e := fmtExhaust(r); e != "never" && e != "now" && e != "-" {
		exhaust = "fds run out in " + e
	}
	if len(r.Holders) == 0 {
		return exhaust + " · holders: unknown"
	}
	parts := make([]string, len(r.Holders))
	for i, h := range r.Holders {
		fds := fmtFDs(h)
		if fds == "-" {
			fds = "?"
		}
		parts[i] = sanitize(fmtHolder(h)) + " fds " + fds
	}
	return exhaust + " · holders: " + strings.Join(parts, ", ")
}

// latencyTitle heads the histogram.
func latencyTitle(r *report.Row) string {
	if r.Closes == 0 {
		return "FIN→close latency: no close seen yet"
	}
	return fmt.Sprintf("FIN→close latency, %d closes: p50 %s  p90 %s  p99 %s  max %s",
		r.Closes, fmtLatency(r.P50), fmtLatency(r.P90), fmtLatency(r.P99), fmtLatency(r.Max))
}

// historyLine is the CLOSE-WAIT sparkline, in width cells.
func historyLine(r *report.Row, w int) string {
	if len(r.History) == 0 {
		return "CLOSE-WAIT history: none yet"
	}
	var lo, hi uint64 = r.History[0], r.History[0]
	for _, v := range r.History {
		lo, hi = min(lo, v), max(hi, v)
	}
	head := "CLOSE-WAIT history "
	tail := fmt.Sprintf("  now %d (min %d, max %d)", r.History[len(r.History)-1], lo, hi)
	n := len(r.History)
	if w > 0 {
		n = min(n, max(w-cellWidth(head)-cellWidth(tail), 4))
	}
	return head + sparkline(r.History, n) + tail
}
