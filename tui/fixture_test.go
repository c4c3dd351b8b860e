package tui

import (
	"time"

	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/report"
)

// base is the synthetic reports' first time.
var base = time.Date(2025, 3, 14, 12, 0, 0, 0, time.UTC)

// hist makes a histogram with counts at the given buckets.
func hist(counts map[int]uint64) []uint64 {
	h := make([]uint64, events.HistBuckets)
	for i, n := range counts {
		h[i] = n
	}
	return h
}

// history makes n samples of a CLOSE-WAIT count growing from start by step.
func history(n int, start, step uint64) []uint64 {
	h := make([]uint64, n)
	for i := range h {
		h[i] = start + uint64(i)*step
	}
	return h
}

// sampleReport is the n-th report of a node with three rows: a Kubernetes
// server leaking fast on 8080 (its closes take ms), a systemd nginx leaking
// slowly on 80 (its closes take about a second) and a client pool on 5432
// that does not grow (its closes take minutes); and two peers.
func sampleReport(n int) report.Report {
	return report.Report{
		Time:   base.Add(time.Duration(n) * time.Second),
		Window: 5 * time.Minute,
		Rows: []report.Row{
			{
				Workload:        report.Workload{Namespace: "shop", Pod: "api-7d9f8b6c5-x2x4q", Container: "server", Cgroup: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234abcd_0000.slice/cri-containerd-0123456789abcdef.scope"},
				CgroupID:        4242,
				Port:            8080,
				Direction:       "inbound",
				InCloseWait:     uint64(40 + n),
				Stuck:           30 + n,
				NewPerMinute:    14.2,
				ClosesPerMinute: 2.1,
				GrowthPerMinute: 12.1,
				OldestAge:       3*time.Minute + 12*time.Second + time.Duration(n)*time.Second,
				OldestAgeKnown:  true,
				Closes:          1200,
				P50:             events.HistUpperBound(11),
				P90:             events.HistUpperBound(12),
				P99:             events.HistUpperBound(13),
				Max:             events.HistUpperBound(20),
				Hist:            hist(map[int]uint64{10: 300, 11: 500, 12: 300, 13: 90, 20: 10}),
				Holders:         []report.Holder{{PID: 4242, Comm: "server", OpenFDs: 812 + n, FDLimit: 1024}, {PID: 4243, Comm: "worker", OpenFDs: 40, FDLimit: 1024}, {PID: 4250, Comm: "sidecar", OpenFDs: 12, FDLimit: 4096}},
				Exhaustion:      17*time.Minute + 30*time.Second,
				ReadEOF:         25,
				NeverRead:       5 + n,
				UnreadData:      2,
				History:         history(min(10+n, 60), 0, 4),
			},
			{
				Workload:        report.Workload{Cgroup: "/system.slice/nginx.service"},
				CgroupID:        77,
				Port:            80,
				Direction:       "inbound",
				InCloseWait:     9,
				Stuck:           3,
				NewPerMinute:    1.5,
				ClosesPerMinute: 1.1,
				GrowthPerMinute: 0.4,
				OldestAge:       2*time.Hour + 5*time.Minute,
				OldestAgeKnown:  false,
				Closes:          64,
				P50:             events.HistUpperBound(19),
				P90:             events.HistUpperBound(20),
				P99:             events.HistUpperBound(20),
				Max:             events.HistUpperBound(20),
				Hist:            hist(map[int]uint64{19: 40, 20: 24}),
				Holders:         []report.Holder{{PID: 901, Comm: "nginx", OpenFDs: 130, FDLimit: 65536}},
				Exhaustion:      90 * 24 * time.Hour,
				ReadEOF:         0,
				NeverRead:       3,
				UnreadData:      3,
				History:         []uint64{9, 9, 8, 9, 9, 9, 9, 9, 9, 9},
			},
			{
				Workload:        report.Workload{Namespace: "billing", Pod: "invoicer-0", Container: "app"},
				CgroupID:        99,
				Port:            5432,
				Direction:       "outbound",
				InCloseWait:     2,
				Stuck:           0,
				NewPerMinute:    0.2,
				ClosesPerMinute: 0.2,
				GrowthPerMinute: 0,
				Closes:          7,
				P50:             events.HistUpperBound(27),
				P90:             events.HistUpperBound(28),
				P99:             events.HistUpperBound(28),
				Max:             events.HistUpperBound(28),
				Hist:            hist(map[int]uint64{27: 5, 28: 2}),
				Holders:         []report.Holder{{PID: 3100, Comm: "java"}},
				ExhaustionNever: true,
				History:         []uint64{0, 1, 2, 2, 1, 2},
			},
		},
		Peers: []report.Peer{
			{Addr: "10.0.3.7:8443", NetNS: 4026531840, FinWait2: 120, TimeWait: 14, OldestFinWait2: 7*time.Minute + 3*time.Second},
			{Addr: "192.168.1.20:443", NetNS: 4026532201, FinWait2: 0, TimeWait: 310},
		},
	}
}
