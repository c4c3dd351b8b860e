// Command benchreport is the helper of scripts/bench.sh (make bench).
//
//	benchreport machine
//	    Prints the machine description: kernel, CPU model, CPUs, memory.
//	benchreport attached -pid PID -perf PERF.json
//	    Exits 0 when `bpftool -j perf list` (in PERF.json) shows a program of
//	    PID attached to the inet_sock_set_state tracepoint, 1 otherwise.
//	benchreport progs -pid PID -perf PERF.json -progs PROGS.json
//	    Prints, in logfmt, the summed run_time_ns, run_cnt and
//	    recursion_misses (from `bpftool -j prog show`) of PID's programs that
//	    are attached to inet_sock_set_state, with their ids and names.
//	benchreport report -runs RUNS.jsonl -json OUT.json
//	    Reads one JSON object per run (written by bench.sh) and prints the
//	    per-configuration table; writes the same, with the runs, to OUT.json.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

const tracepoint = "inet_sock_set_state"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "machine":
		fmt.Println(machine().String())
	case "attached":
		err = attachedCmd(os.Args[2:])
	case "progs":
		err = progsCmd(os.Args[2:])
	case "report":
		err = reportCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: benchreport machine | attached -pid P -perf F | progs -pid P -perf F -progs F | report -runs F -json F")
	os.Exit(2)
}

// Machine is the description printed above the table.
type Machine struct {
	Kernel   string `json:"kernel"`
	CPU      string `json:"cpu"`
	CPUs     int    `json:"cpus"`
	MemoryMi int64  `json:"memory_mib"`
}

func (m Machine) String() string {
	return fmt.Sprintf("Linux %s, %s, %d CPUs, %.1f GiB RAM", m.Kernel, m.CPU, m.CPUs, float64(m.MemoryMi)/1024)
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), CPU: "unknown CPU", Kernel: "unknown"}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.Join(strings.Fields(v), " ")
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "MemTotal:" {
				kib, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemoryMi = kib / 1024
			}
		}
	}
	return m
}

// perfEntry is one object of `bpftool -j perf list`.
type perfEntry struct {
	PID        int    `json:"pid"`
	ProgID     int    `json:"prog_id"`
	Tracepoint string `json:"tracepoint"`
}

// progEntry is one object of `bpftool -j prog show`. The stats fields are
// absent when zero.
type progEntry struct {
	ID              int    `json:"id"`
	Name            string `json:"name"`
	RunTimeNs       uint64 `json:"run_time_ns"`
	RunCnt          uint64 `json:"run_cnt"`
	RecursionMisses uint64 `json:"recursion_misses"`
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return errors.New(path + " is empty")
	}
	return json.Unmarshal(b, v)
}

// attachedIDs returns the ids of PID's programs on the tracepoint, in order.
func attachedIDs(pid int, perfPath string) ([]int, error) {
	var perf []perfEntry
	if err := readJSON(perfPath, &perf); err != nil {
		return nil, err
	}
	seen := map[int]bool{}
	var ids []int
	for _, e := range perf {
		if e.PID == pid && e.Tracepoint == tracepoint && !seen[e.ProgID] {
			seen[e.ProgID] = true
			ids = append(ids, e.ProgID)
		}
	}
	sort.Ints(ids)
	return ids, nil
}

func attachedCmd(args []string) error {
	fs := flag.NewFlagSet("attached", flag.ExitOnError)
	pid := fs.Int("pid", 0, "tracer pid")
	perfPath := fs.String("perf", "", "bpftool -j perf list output")
	fs.Parse(args)
	ids, err := attachedIDs(*pid, *perfPath)
	if err != nil || len(ids) == 0 {
		os.Exit(1)
	}
	return nil
}

func progsCmd(args []string) error {
	fs := flag.NewFlagSet("progs", flag.ExitOnError)
	pid := fs.Int("pid", 0, "tracer pid")
	perfPath := fs.String("perf", "", "bpftool -j perf list output")
	progsPath := fs.String("progs", "", "bpftool -j prog show output")
	fs.Parse(args)
	ids, err := attachedIDs(*pid, *perfPath)
	if err != nil {
		return err
	}
	var progs []progEntry
	if err := readJSON(*progsPath, &progs); err != nil {
		return err
	}
	byID := map[int]progEntry{}
	for _, p := range progs {
		byID[p.ID] = p
	}
	var sum progEntry
	var idStrs, names []string
	for _, id := range ids {
		p, ok := byID[id]
		if !ok {
			continue
		}
		idStrs = append(idStrs, strconv.Itoa(id))
		names = append(names, p.Name)
		sum.RunTimeNs += p.RunTimeNs
		sum.RunCnt += p.RunCnt
		sum.RecursionMisses += p.RecursionMisses
	}
	if len(names) == 0 {
		return fmt.Errorf("no program of pid %d attached to %s", *pid, tracepoint)
	}
	fmt.Printf("prog_ids=%s prog_names=%s run_time_ns=%d run_cnt=%d recursion_misses=%d\n",
		strings.Join(idStrs, ","), strings.Join(names, ","), sum.RunTimeNs, sum.RunCnt, sum.RecursionMisses)
	return nil
}

// Run is one line of bench.sh's runs.jsonl. Pointers are absent values
// (the no-tracer configuration, or a tracer whose value could not be read).
type Run struct {
	Config string `json:"config"`
	Round  int    `json:"round"`
	Port   int    `json:"port"`
	OK     bool   `json:"ok"`
	Note   string `json:"note,omitempty"`
	// StatsRound: run with kernel.bpf_stats_enabled=1, which slows every
	// program run; only its ns/run counts.
	StatsRound      bool     `json:"stats_round"`
	Completed       int64    `json:"completed"`
	ChurnErrors     int64    `json:"churn_errors"`
	ConnPerSecond   float64  `json:"conn_per_second"`
	Expected        *int64   `json:"expected,omitempty"`
	Emitted         *int64   `json:"emitted,omitempty"`
	Lost            *int64   `json:"lost,omitempty"`
	Unaccounted     *int64   `json:"unaccounted,omitempty"`
	CPUSeconds      *float64 `json:"cpu_seconds,omitempty"`
	StartCPUSeconds *float64 `json:"startup_cpu_seconds,omitempty"`
	PeakRSSKiB      *int64   `json:"peak_rss_kib,omitempty"`
	RunTimeNs       *int64   `json:"run_time_ns,omitempty"`
	RunCnt          *int64   `json:"run_cnt,omitempty"`
	RecursionMisses *int64   `json:"recursion_misses,omitempty"`
	ProgNames       string   `json:"prog_names,omitempty"`
	Stopped         string   `json:"stopped,omitempty"`
}

// Summary is one configuration's row.
type Summary struct {
	Config        string   `json:"config"`
	Runs          int      `json:"runs"`
	FailedRuns    int      `json:"failed_runs"`
	ConnPerSecond float64  `json:"median_conn_per_second"`
	ConnPerSecMin float64  `json:"min_conn_per_second"`
	ConnPerSecMax float64  `json:"max_conn_per_second"`
	PctOfBaseline *float64 `json:"pct_of_no_tracer,omitempty"`
	// The median over rounds of the run's rate against the untraced run of
	// the same round: drift of the host between rounds cancels out.
	PairedPct       *float64 `json:"median_paired_pct_of_no_tracer,omitempty"`
	CPUSeconds      *float64 `json:"median_cpu_seconds,omitempty"`
	CPUPer100k      *float64 `json:"median_cpu_seconds_per_100k_connections,omitempty"`
	MaxRSSMiB       *float64 `json:"max_peak_rss_mib,omitempty"`
	Expected        *float64 `json:"median_expected,omitempty"`
	Emitted         *float64 `json:"median_emitted,omitempty"`
	Lost            *float64 `json:"median_lost,omitempty"`
	MaxLost         *float64 `json:"max_lost,omitempty"`
	Unaccounted     *float64 `json:"median_unaccounted,omitempty"`
	MaxUnaccounted  *float64 `json:"max_abs_unaccounted,omitempty"`
	NsPerRun        *float64 `json:"median_ns_per_run,omitempty"`
	RunCnt          *float64 `json:"median_run_cnt,omitempty"`
	RecursionMisses *float64 `json:"median_recursion_misses,omitempty"`
	ProgNames       string   `json:"prog_names,omitempty"`
}

func median(xs []float64) *float64 {
	if len(xs) == 0 {
		return nil
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return &m
}

func maxOf(xs []float64, abs bool) *float64 {
	if len(xs) == 0 {
		return nil
	}
	m := math.Inf(-1)
	for _, x := range xs {
		if abs {
			x = math.Abs(x)
		}
		m = math.Max(m, x)
	}
	return &m
}

// summarize makes config's row; baseline holds the untraced rate by round.
func summarize(config string, runs []Run, baseline map[int]float64) Summary {
	s := Summary{Config: config}
	var rate, paired, cpu, cpu100k, rss, exp, emit, lost, unacc, nsRun, cnt, rec []float64
	for _, r := range runs {
		if r.StatsRound {
			if r.OK && r.RunTimeNs != nil && r.RunCnt != nil && *r.RunCnt > 0 {
				nsRun = append(nsRun, float64(*r.RunTimeNs)/float64(*r.RunCnt))
				cnt = append(cnt, float64(*r.RunCnt))
			}
			continue
		}
		s.Runs++
		if !r.OK {
			s.FailedRuns++
			continue
		}
		if r.ProgNames != "" {
			s.ProgNames = r.ProgNames
		}
		rate = append(rate, r.ConnPerSecond)
		if b := baseline[r.Round]; b > 0 {
			paired = append(paired, 100*r.ConnPerSecond/b)
		}
		if r.CPUSeconds != nil {
			cpu = append(cpu, *r.CPUSeconds)
			if r.Completed > 0 {
				cpu100k = append(cpu100k, *r.CPUSeconds*1e5/float64(r.Completed))
			}
		}
		if r.PeakRSSKiB != nil {
			rss = append(rss, float64(*r.PeakRSSKiB)/1024)
		}
		if r.Expected != nil && r.Emitted != nil {
			exp = append(exp, float64(*r.Expected))
			emit = append(emit, float64(*r.Emitted))
		}
		if r.Lost != nil {
			lost = append(lost, float64(*r.Lost))
		}
		if r.Unaccounted != nil {
			unacc = append(unacc, float64(*r.Unaccounted))
		}
		if r.RecursionMisses != nil {
			rec = append(rec, float64(*r.RecursionMisses))
		}
	}
	if m := median(rate); m != nil {
		s.ConnPerSecond = *m
		s.ConnPerSecMin = -*maxOf(negate(rate), false)
		s.ConnPerSecMax = *maxOf(rate, false)
	}
	s.PairedPct = median(paired)
	s.CPUSeconds = median(cpu)
	s.CPUPer100k = median(cpu100k)
	s.MaxRSSMiB = maxOf(rss, false)
	s.Expected, s.Emitted = median(exp), median(emit)
	s.Lost, s.MaxLost = median(lost), maxOf(lost, false)
	s.Unaccounted, s.MaxUnaccounted = median(unacc), maxOf(unacc, true)
	s.NsPerRun, s.RunCnt, s.RecursionMisses = median(nsRun), median(cnt), median(rec)
	return s
}

func negate(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = -x
	}
	return out
}

func num(p *float64, format string) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf(format, *p)
}

func reportCmd(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	runsPath := fs.String("runs", "", "runs.jsonl written by bench.sh")
	jsonPath := fs.String("json", "", "where to write the JSON report")
	n := fs.Int("n", 0, "connections per run")
	workers := fs.Int("workers", 0, "churn workers")
	rounds := fs.Int("rounds", 0, "rounds")
	fs.Parse(args)

	f, err := os.Open(*runsPath)
	if err != nil {
		return err
	}
	defer f.Close()
	var runs []Run
	var order []string
	byConfig := map[string][]Run{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var r Run
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return fmt.Errorf("%s: %v: %s", *runsPath, err, line)
		}
		runs = append(runs, r)
		if _, ok := byConfig[r.Config]; !ok {
			order = append(order, r.Config)
		}
		byConfig[r.Config] = append(byConfig[r.Config], r)
	}
	if err := sc.Err(); err != nil {
		return err
	}

	baseline := map[int]float64{}
	for _, r := range byConfig["none"] {
		if r.OK && !r.StatsRound {
			baseline[r.Round] = r.ConnPerSecond
		}
	}
	var sums []Summary
	var base float64
	for _, c := range order {
		s := summarize(c, byConfig[c], baseline)
		if c == "none" {
			base = s.ConnPerSecond
		}
		sums = append(sums, s)
	}
	for i := range sums {
		if base > 0 && sums[i].Runs > sums[i].FailedRuns {
			p := 100 * sums[i].ConnPerSecond / base
			sums[i].PctOfBaseline = &p
		}
	}

	m := machine()
	fmt.Println(m.String())
	fmt.Printf("%d connections per run, %d churn workers, %d rounds, configurations alternating; medians over rounds (paired: of each round against its own untraced run)\n\n", *n, *workers, *rounds)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\truns\tconn/s\tvs none\tpaired\tcpu s\tcpu/100k\tpeak RSS MiB\temitted/expected\tlost\tunaccounted\tns/run\trun_cnt\t")
	for _, s := range sums {
		runsCol := strconv.Itoa(s.Runs)
		if s.FailedRuns > 0 {
			runsCol = fmt.Sprintf("%d (%d failed)", s.Runs, s.FailedRuns)
		}
		rate, pct, paired := "-", "-", "-"
		if s.Runs > s.FailedRuns {
			rate = fmt.Sprintf("%.0f", s.ConnPerSecond)
			pct = num(s.PctOfBaseline, "%.1f%%")
			paired = num(s.PairedPct, "%.1f%%")
		}
		ee := "-"
		if s.Expected != nil {
			ee = fmt.Sprintf("%.0f/%.0f", *s.Emitted, *s.Expected)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n",
			s.Config, runsCol, rate, pct, paired, num(s.CPUSeconds, "%.2f"), num(s.CPUPer100k, "%.3f"), num(s.MaxRSSMiB, "%.1f"),
			ee, num(s.Lost, "%.0f"), num(s.Unaccounted, "%.0f"), num(s.NsPerRun, "%.0f"), num(s.RunCnt, "%.0f"))
	}
	tw.Flush()

	out := struct {
		Machine     Machine   `json:"machine"`
		Connections int       `json:"connections"`
		Workers     int       `json:"workers"`
		Rounds      int       `json:"rounds"`
		Summary     []Summary `json:"summary"`
		Runs        []Run     `json:"runs"`
	}{m, *n, *workers, *rounds, sums, runs}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(*jsonPath, append(b, '\n'), 0o644)
}
