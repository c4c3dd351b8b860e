package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A timed soak (scripts/soak.sh with SOAK_DURATION) runs the quiet
// closewait while scripts/leakcycle keeps a leak coming and going, and
// samples the tracer's metrics. timed checks what was written against the
// leak log: every leak that lived past the threshold (and a slack for the
// report's flush) is reported stuck exactly once, and every ended leak
// that was reported has its end written (app_close, or abort with cause
// destroyed for those tcptrace kill destroyed). What is missing beyond the
// events counted lost is unaccounted. It also fits a line to each sampled
// series and reports its slope per hour.
func timed(args []string) int {
	fs := flag.NewFlagSet("soakcheck timed", flag.ContinueOnError)
	eventsPath := fs.String("events", "", "tcptrace's JSON lines")
	leaksPath := fs.String("leaks", "", "leakcycle's log")
	samplesPath := fs.String("samples", "", "samples: unix_seconds rss_bytes goroutines open_fds, one per line")
	port := fs.Int("port", 0, "the leak's port")
	threshold := fs.Duration("threshold", 0, "closewait's --threshold")
	slack := fs.Duration("slack", 5*time.Second, "time after the threshold within which a stuck report is due")
	stopNS := fs.Int64("stopped", 0, "unix ns when the leak stopped cycling")
	lost := fs.Int64("lost", 0, "events tcptrace counted lost")
	warmup := fs.Float64("warmup", 0.1, "share of the samples left out of the slopes (start-up)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *eventsPath == "" || *leaksPath == "" || *samplesPath == "" || *port == 0 || *threshold <= 0 || *stopNS == 0 || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "soakcheck timed: -events, -leaks, -samples, -port, -threshold and -stopped are required")
		return 2
	}
	leaks, err := readLeaks(*leaksPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soakcheck:", err)
		return 1
	}
	if err := assign(*eventsPath, *port, leaks); err != nil {
		fmt.Fprintln(os.Stderr, "soakcheck:", err)
		return 1
	}
	var st struct {
		leaks, closed, destroyed, held          int
		expected, written, missing, extra, lost int64
	}
	st.lost = *lost
	due := (*threshold + *slack).Nanoseconds()
	for _, ls := range leaks {
		for _, l := range ls {
			st.leaks++
			end := l.end
			switch l.how {
			case "closed":
				st.closed++
			case "destroyed":
				st.destroyed++
			default:
				st.held++
				end = *stopNS
			}
			wantStuck := 0
			if end-l.start > due {
				wantStuck = 1
			}
			st.written += int64(l.stuck + l.closes + l.aborts)
			switch {
			case l.stuck < wantStuck:
				st.missing++
			case l.stuck > 1:
				st.extra += int64(l.stuck - 1)
			}
			st.expected += int64(wantStuck)
			// The end is written for a socket reported stuck (quiet
			// default): app_close when closed, abort when destroyed.
			if l.how != "" && (wantStuck == 1 || l.stuck > 0) {
				st.expected++
				got := l.closes
				if l.how == "destroyed" {
					got = l.aborts
				}
				if got == 0 {
					st.missing++
				}
				st.extra += int64(max(got-1, 0))
			}
			if l.how == "closed" {
				st.extra += int64(l.aborts)
			} else if l.how == "destroyed" {
				st.extra += int64(l.closes)
			}
		}
	}
	unaccounted := max(st.missing-st.lost, 0)
	fmt.Printf("leaks %d (closed %d, destroyed by kill %d, held at the end %d)\n", st.leaks, st.closed, st.destroyed, st.held)
	fmt.Printf("events expected %d, written %d, missing %d, lost (counted) %d, unaccounted %d, unexpected %d\n",
		st.expected, st.written, st.missing, st.lost, unaccounted, st.extra)
	ok := unaccounted == 0 && st.extra == 0
	if err := slopes(*samplesPath, *warmup); err != nil {
		fmt.Fprintln(os.Stderr, "soakcheck:", err)
		ok = false
	}
	if !ok {
		return 1
	}
	return 0
}

// instance is one leaked socket, by its client's address, and the events
// written about it.
type instance struct {
	start, end            int64
	how                   string // closed, destroyed; "" while held
	stuck, closes, aborts int
}

func readLeaks(path string) (map[string][]*instance, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	leaks := map[string][]*instance{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 3 {
			return nil, fmt.Errorf("%s: bad line %q", path, sc.Text())
		}
		at, err := strconv.ParseInt(fs[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: bad line %q", path, sc.Text())
		}
		switch {
		case fs[0] == "leak":
			leaks[fs[2]] = append(leaks[fs[2]], &instance{start: at})
		case fs[0] == "end" && len(fs) == 4:
			ls := leaks[fs[2]]
			if len(ls) == 0 {
				return nil, fmt.Errorf("%s: end of %s, never leaked", path, fs[2])
			}
			ls[len(ls)-1].end, ls[len(ls)-1].how = at, fs[3]
		default:
			return nil, fmt.Errorf("%s: bad line %q", path, sc.Text())
		}
	}
	return leaks, sc.Err()
}

// assign counts each event of the leak's port against the instance of its
// client address that was leaked last before it.
func assign(path string, port int, leaks map[string][]*instance) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			Time       time.Time `json:"time"`
			Event      string    `json:"event"`
			LocalPort  int       `json:"local_port"`
			RemoteAddr string    `json:"remote_addr"`
			RemotePort int       `json:"remote_port"`
			Cause      string    `json:"cause"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("%s: %v", path, err)
		}
		if ev.LocalPort != port {
			continue
		}
		ls := leaks[fmt.Sprintf("%s:%d", ev.RemoteAddr, ev.RemotePort)]
		i, _ := slices.BinarySearchFunc(ls, ev.Time.UnixNano(), func(l *instance, t int64) int { return cmpInt(l.start, t) })
		if i == 0 {
			continue // not a leak of ours (or before its log line)
		}
		l := ls[i-1]
		switch {
		case ev.Event == "stuck":
			l.stuck++
		case ev.Event == "app_close":
			l.closes++
		case ev.Event == "abort" && ev.Cause == "destroyed":
			l.aborts++
		}
	}
	return sc.Err()
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// slopes prints, for each sampled series, its first and last value and
// the slope per hour of a least-squares line.
func slopes(path string, warmup float64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var rows [][4]float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r [4]float64
		if _, err := fmt.Sscan(sc.Text(), &r[0], &r[1], &r[2], &r[3]); err != nil {
			return fmt.Errorf("%s: bad sample %q", path, sc.Text())
		}
		rows = append(rows, r)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	rows = rows[int(float64(len(rows))*warmup):]
	if len(rows) < 3 {
		return fmt.Errorf("%s: %d samples after the warm-up, too few for a slope", path, len(rows))
	}
	hours := (rows[len(rows)-1][0] - rows[0][0]) / 3600
	fmt.Printf("samples %d over %.2f h (after a %.0f%% warm-up)\n", len(rows), hours, warmup*100)
	for c, name := range []string{"", "rss_MiB", "goroutines", "open_fds"} {
		if c == 0 {
			continue
		}
		scale := 1.0
		if c == 1 {
			scale = 1 << 20
		}
		var sx, sy, sxx, sxy float64
		n := float64(len(rows))
		for _, r := range rows {
			x, y := (r[0]-rows[0][0])/3600, r[c]/scale
			sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
		}
		slope := (n*sxy - sx*sy) / (n*sxx - sx*sx)
		fmt.Printf("%-10s first %.1f last %.1f min %.1f max %.1f slope %+.2f per hour\n", name,
			rows[0][c]/scale, rows[len(rows)-1][c]/scale, minCol(rows, c)/scale, maxCol(rows, c)/scale, slope)
	}
	return nil
}

func minCol(rows [][4]float64, c int) float64 {
	m := rows[0][c]
	for _, r := range rows {
		m = min(m, r[c])
	}
	return m
}

func maxCol(rows [][4]float64, c int) float64 {
	m := rows[0][c]
	for _, r := range rows {
		m = max(m, r[c])
	}
	return m
}
