// Package report answers an incident's questions about CLOSE-WAIT: which
// workload leaks on which port, how fast, since when, how long its closes
// normally take, why its sockets are stuck and when its holder will run out
// of file descriptors. A Report is what `tcptrace top` shows, what `top
// --once` prints, what the summary events carry and what GET /api/v1/report
// serves (and `top --from` reads back): one JSON shape for all of them.
package report

import "time"

// Report is one view of the node.
type Report struct {
	// Time the report was made; Window is how far back rates look.
	Time   time.Time     `json:"time"`
	Window time.Duration `json:"window_ns"`
	// Rows, by workload, service port and direction, leak rate first.
	Rows []Row `json:"rows"`
	// Peers is the other side of leaks: remote endpoints our sockets wait
	// on in FIN_WAIT2 (we closed, the peer never did) and TIME_WAIT counts.
	Peers []Peer `json:"peers"`
	// PeersOmitted counts the peers left out of Peers, beyond its bound
	// (those with the fewest sockets waiting).
	PeersOmitted int `json:"peers_omitted,omitempty"`
	// Listeners is the harm: listening sockets with connections waiting in
	// their accept queue, or that dropped connections within the window,
	// most drops first.
	Listeners []Listener `json:"listeners"`
	// ListenersOmitted counts those left out beyond the bound.
	ListenersOmitted int `json:"listeners_omitted,omitempty"`
}

// Listener is a listening socket: its queue now, and its drops.
type Listener struct {
	Addr     string   `json:"addr"` // ip:port
	NetNS    uint32   `json:"netns"`
	Workload Workload `json:"workload"` // of the cgroup that created it
	Queue    uint32   `json:"queue"`    // connections waiting to be accepted
	Limit    uint32   `json:"limit"`    // the queue's limit (listen backlog)
	// Drops since the listener was created, and per minute over the
	// window (or since tcptrace first saw it).
	Drops          uint64  `json:"drops"`
	DropsPerMinute float64 `json:"drops_per_minute"`
}

// Workload names a socket's cgroup: Kubernetes names when known, else the
// cgroup path (on a plain host, the systemd unit).
type Workload struct {
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Container string `json:"container,omitempty"`
	Cgroup    string `json:"cgroup,omitempty"`
}

// Holder is a process holding sockets of a row, with its descriptor use.
type Holder struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
	// OpenFDs and FDLimit (the soft RLIMIT_NOFILE) of the process; 0 when
	// unknown (it exited, or /proc was not readable).
	OpenFDs int `json:"open_fds"`
	FDLimit int `json:"fd_limit"`
	// AcceptFailures counts the process's accept() calls that failed for
	// want of a descriptor (EMFILE), on any listener, since tcptrace
	// started: it has run out.
	AcceptFailures uint64 `json:"accept_failures,omitempty"`
}

// Row is one workload's sockets on one service port and direction.
type Row struct {
	Workload  Workload `json:"workload"`
	CgroupID  uint64   `json:"cgroup_id"`
	Port      uint16   `json:"port"`
	Direction string   `json:"direction"` // inbound, outbound, other

	InCloseWait uint64 `json:"in_close_wait"` // now
	Stuck       int    `json:"stuck"`         // now, past the threshold

	// Per minute, over the window.
	NewPerMinute    float64 `json:"new_per_minute"`    // entered CLOSE-WAIT
	ClosesPerMinute float64 `json:"closes_per_minute"` // closed by the application
	GrowthPerMinute float64 `json:"growth_per_minute"` // net change of InCloseWait

	// OldestAge is the longest a socket of the row has been in CLOSE-WAIT
	// (0 without one); OldestAgeKnown is false when that socket predates
	// tcptrace (its age is then a lower bound).
	OldestAge      time.Duration `json:"oldest_age_ns"`
	OldestAgeKnown bool          `json:"oldest_age_known"`

	// FIN-to-close latency since tcptrace started, from the kernel's log2
	// histogram: each the upper bound of its bucket. Closes is how many
	// closes the histogram holds (0: the quantiles mean nothing).
	Closes uint64        `json:"closes"`
	P50    time.Duration `json:"p50_ns"`
	P90    time.Duration `json:"p90_ns"`
	P99    time.Duration `json:"p99_ns"`
	Max    time.Duration `json:"max_ns"`
	// Hist is the histogram itself: Hist[i] counts closes in
	// [2^i, 2^(i+1)) µs (events.HistUpperBound).
	Hist []uint64 `json:"hist"`

	// Holders of the row's stuck sockets, most sockets first (bounded).
	Holders []Holder `json:"holders"`
	// Exhaustion forecasts when the holder closest to its descriptor
	// limit runs out at GrowthPerMinute; Never when not growing.
	Exhaustion      time.Duration `json:"exhaustion_ns"`
	ExhaustionNever bool          `json:"exhaustion_never"`
	// Exhausted: a holder has run out already, its accept() failing for
	// want of a descriptor (Holder.AcceptFailures); Exhaustion is then 0.
	Exhausted bool `json:"exhausted,omitempty"`

	// Diagnosis of the row's stuck sockets (see the stuck event's fields).
	ReadEOF    int `json:"stuck_read_eof"`    // read the peer's FIN, never closed: a close-path bug
	NeverRead  int `json:"stuck_never_read"`  // have not read since the peer closed: abandoned
	UnreadData int `json:"stuck_unread_data"` // of those, with unread bytes

	// History of InCloseWait, one sample per refresh, oldest first
	// (bounded): the sparkline.
	History []uint64 `json:"history"`
}

// Peer is a remote endpoint our sockets wait on.
type Peer struct {
	Addr     string `json:"addr"` // ip:port
	NetNS    uint32 `json:"netns"`
	FinWait2 int    `json:"fin_wait2"`
	TimeWait int    `json:"time_wait"`
	// OldestFinWait2 is how long the oldest FIN_WAIT2 socket has waited,
	// when known.
	OldestFinWait2 time.Duration `json:"oldest_fin_wait2_ns,omitempty"`
}
