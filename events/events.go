// Package events defines what tcptrace reports: the event types, their JSON
// encoding (one object per line) and the JSON Schema that describes it.
//
// These types are written by hand and independent of the generated eBPF
// bindings in package tracer, which decodes kernel records into them.
package events

import (
	"bytes"
	"net/netip"
	"time"
)

// Kind names an event.
type Kind uint8

const (
	// KindTransition is one TCP state change (trace mode).
	KindTransition Kind = iota + 1
	// KindCloseWait: the peer's FIN arrived; the socket entered CLOSE-WAIT.
	KindCloseWait
	// KindStuck: the socket is still in CLOSE-WAIT past the threshold.
	KindStuck
	// KindAppClose: the application closed (or shut down) the socket after
	// the peer's FIN, ending CLOSE-WAIT.
	KindAppClose
	// KindAbort: the socket left CLOSE-WAIT without the application closing
	// it (peer reset, keepalive timeout, socket destroyed by an admin).
	KindAbort
	// KindLost: events dropped since the previous lost event, by cause.
	KindLost
	// KindProgress is never written out. The tracer sends it in band to
	// say that every kernel event before BootNS has been delivered.
	KindProgress
	// KindDestroyed: tcptrace kill destroyed the socket (SOCK_DESTROY).
	KindDestroyed
	// KindNotDestroyed: tcptrace kill left a selected socket alone; Reason
	// says why (a dry run, or it left CLOSE-WAIT meanwhile).
	KindNotDestroyed
	// KindSummary: one row of the leak report (closewait
	// --summary-interval), for log pipelines.
	KindSummary
	// KindListenDrops: a listening socket started dropping connections
	// (its accept queue or SYN queue full); Listener says which, with who
	// holds it, and Dropped how many since tcptrace last looked.
	KindListenDrops
	// KindAcceptFailed: a process's accept() on a listener failed for
	// want of a descriptor, for the first time (Reason: emfile, its
	// RLIMIT_NOFILE; enfile, the system's file table). Task is the
	// process; the socket fields are the listener's.
	KindAcceptFailed
)

var kindNames = [...]string{
	KindTransition:   "transition",
	KindCloseWait:    "close_wait",
	KindStuck:        "stuck",
	KindAppClose:     "app_close",
	KindAbort:        "abort",
	KindLost:         "lost",
	KindDestroyed:    "destroyed",
	KindNotDestroyed: "not_destroyed",
	KindSummary:      "summary",
	KindListenDrops:  "listen_drops",
	KindAcceptFailed: "accept_failed",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "unknown"
}

// Family is the address family of a connection.
type Family uint8

const (
	FamilyIPv4 Family = iota + 1
	FamilyIPv6
)

func (f Family) String() string {
	switch f {
	case FamilyIPv4:
		return "ipv4"
	case FamilyIPv6:
		return "ipv6"
	}
	return "unknown"
}

// Comm is a task's command name as the kernel keeps it: up to 15 bytes,
// NUL-terminated, with no encoding guarantee.
type Comm [16]byte

// Bytes returns the name up to the first NUL.
func (c *Comm) Bytes() []byte {
	if i := bytes.IndexByte(c[:], 0); i >= 0 {
		return c[:i]
	}
	return c[:]
}

func (c Comm) String() string { return string(c.Bytes()) }

// Task identifies a process by its thread-group id and command name.
type Task struct {
	PID  uint32
	Comm Comm
}

// LostCause says why events were dropped.
type LostCause uint8

const (
	// LostRingbufFull: the kernel could not reserve ring-buffer space.
	LostRingbufFull LostCause = iota
	// LostRecursion: the kernel skipped a program run because the program was
	// already running on that CPU (a softirq nested in a process-context run).
	// Counts skipped runs: an upper bound on the events they would have made.
	LostRecursion
	// LostDecode: a ring-buffer record could not be decoded.
	LostDecode
	// LostKernelTableFull: a CLOSE-WAIT socket could not be tracked in the
	// kernel's table; its events still arrive, correlated in user space.
	LostKernelTableFull
	// LostTableFull: a CLOSE-WAIT socket could not be tracked in user space;
	// it will not be reported stuck. In trace mode: a socket's state
	// timestamp was evicted; its next transition has no PrevStateNS.
	LostTableFull
	// NumLostCauses is the number of causes.
	NumLostCauses
)

var lostNames = [NumLostCauses]string{
	LostRingbufFull:     "ringbuf_full",
	LostRecursion:       "recursion_miss",
	LostDecode:          "decode_error",
	LostKernelTableFull: "kernel_table_full",
	LostTableFull:       "table_full",
}

func (c LostCause) String() string {
	if c < NumLostCauses {
		return lostNames[c]
	}
	return "unknown"
}

// LostCounts holds one count per cause.
type LostCounts [NumLostCauses]uint64

// Sub returns c - prev, cause by cause.
func (c LostCounts) Sub(prev LostCounts) LostCounts {
	var d LostCounts
	for i := range c {
		d[i] = c[i] - prev[i]
	}
	return d
}

// Total sums all causes.
func (c LostCounts) Total() uint64 {
	var n uint64
	for _, v := range c {
		n += v
	}
	return n
}

// AbortCause says why a socket left CLOSE-WAIT without the application
// closing it, from the error the kernel set on it.
type AbortCause uint8

const (
	// CauseOther: no error set, or one of no known abort path.
	CauseOther AbortCause = iota
	// CauseReset: a reset from the peer (EPIPE in CLOSE-WAIT, ECONNRESET),
	// what an application writing to a half-closed connection gets once
	// the peer has closed it fully.
	CauseReset
	// CauseTimeout: keepalive, user timeout or retransmissions gave up
	// (ETIMEDOUT, or the ICMP error that came meanwhile).
	CauseTimeout
	// CauseDestroyed: the socket was destroyed (ECONNABORTED): ss -K,
	// tcptrace kill.
	CauseDestroyed
	numCauses
)

var causeNames = [numCauses]string{
	CauseOther:     "other",
	CauseReset:     "reset",
	CauseTimeout:   "timeout",
	CauseDestroyed: "destroyed",
}

func (c AbortCause) String() string {
	if c < numCauses {
		return causeNames[c]
	}
	return "other"
}

// Errno values (Linux, every architecture tcptrace runs on) that name an
// abort's cause.
const (
	errnoEPIPE        = 32
	errnoENOPROTOOPT  = 92
	errnoENETDOWN     = 100
	errnoENETUNREACH  = 101
	errnoECONNABORTED = 103
	errnoECONNRESET   = 104
	errnoETIMEDOUT    = 110
	errnoECONNREFUSED = 111
	errnoEHOSTDOWN    = 112
	errnoEHOSTUNREACH = 113
)

// AbortCauseOf names the cause of an abort from the socket's error (sk_err)
// when it moved to CLOSE. tcp_reset sets EPIPE in CLOSE-WAIT; tcp_write_err
// sets ETIMEDOUT, or the last soft error if any came: an ICMP one
// (unreachable, refused) or a failed route, which in CLOSE-WAIT nothing
// else turns into an abort.
func AbortCauseOf(errno uint8) AbortCause {
	switch errno {
	case errnoEPIPE, errnoECONNRESET:
		return CauseReset
	case errnoETIMEDOUT, errnoEHOSTUNREACH, errnoENETUNREACH, errnoEHOSTDOWN, errnoENETDOWN,
		errnoECONNREFUSED, errnoENOPROTOOPT:
		return CauseTimeout
	case errnoECONNABORTED:
		return CauseDestroyed
	}
	return CauseOther
}

// Owner is a process holding a descriptor of the socket.
type Owner struct {
	*Process // never nil
	FD       int
}

// Process describes a process holding sockets. One value is shared by every
// socket the process holds (a leak means many), so it is never modified.
type Process struct {
	PID     int
	Comm    string
	Exe     string
	Cmdline string // bounded; NUL separators shown as spaces
	UID     uint32
}

// OwnerSource says how an event's owners were determined.
type OwnerSource uint8

const (
	// OwnerUnresolved: no holder was found (yet); owner is empty.
	OwnerUnresolved OwnerSource = iota
	// OwnerProc: found in /proc/<pid>/fd when the event was made.
	OwnerProc
	// OwnerLastSeen: the socket is closed; the holders it last had.
	OwnerLastSeen
	// OwnerNoFile: no file refers to the socket (e.g. still in a
	// listener's accept queue), so no process holds it.
	OwnerNoFile
)

var ownerSourceNames = [...]string{
	OwnerUnresolved: "unresolved",
	OwnerProc:       "proc",
	OwnerLastSeen:   "last_seen",
	OwnerNoFile:     "no_file",
}

func (s OwnerSource) String() string {
	if int(s) < len(ownerSourceNames) {
		return ownerSourceNames[s]
	}
	return "unknown"
}

// Event is one reported fact. Which fields are meaningful depends on Kind;
// see docs/events.md and schema.json.
type Event struct {
	Kind Kind
	Time time.Time

	// Socket identity and addresses (all kinds but lost).
	Sock       uint64 // opaque, stable for the socket's life
	Family     Family
	LocalAddr  netip.Addr
	LocalPort  uint16
	RemoteAddr netip.Addr
	RemotePort uint16
	NetNS      uint32
	// Dir says which port is the service (closewait mode): the local one
	// of an inbound socket, the remote one of an outbound one. 0: unknown.
	Dir Direction
	// Container context: the socket's cgroup v2 id, and what its path says.
	CgroupID    uint64
	ContainerID string
	PodUID      string
	// Kubernetes names for PodUID, when enrichment is on (nil otherwise).
	// Shared by every event of the pod: never modified.
	K8s *K8s

	// transition
	OldState     State
	NewState     State // also app_close, abort
	PrevStateNS  int64 // valid when HasPrevState
	HasPrevState bool
	Task         Task // the task the kernel ran the transition in; accept_failed: the process

	// stuck, app_close, abort
	AgeNS       int64 // stuck, abort: time in CLOSE-WAIT; app_close: FIN to close
	AgeKnown    bool  // false when the FIN preceded tcptrace
	ThresholdNS int64 // stuck
	WasStuck    bool  // app_close, abort
	Closer      Task  // app_close: valid when HasCloser
	HasCloser   bool
	// app_close, valid with HasCloser: the closer was exiting (PF_EXITING),
	// so the exit closed the socket, not a close() call.
	ClosedByExit bool
	// app_close: the peer had reset the connection while the application
	// held the socket, and this is the close of its descriptor.
	PeerReset bool
	// abort: why the socket left CLOSE-WAIT.
	Cause AbortCause

	// stuck: why the socket stays, read from the socket itself (sock_diag)
	// when the report was made; valid when DiagKnown. ReadEOF: the
	// application has read the peer's FIN (end of file) and still not
	// closed; otherwise UnreadBytes of data wait unread before it.
	// SinceSendNS and SinceRecvNS: time since the socket last sent data
	// and since data last arrived (millisecond resolution).
	DiagKnown   bool
	ReadEOF     bool
	UnreadBytes uint64
	SinceSendNS int64
	SinceRecvNS int64

	// close_wait, stuck, app_close, abort: who holds the socket.
	Inode       uint64 // socket inode; 0 when no file refers to it
	Owners      []Owner
	OwnerSource OwnerSource
	// stuck, for a socket no file refers to (OwnerNoFile): the listening
	// socket whose accept queue it waits in, when found; nil otherwise.
	Listener *Listener

	// stuck: the other end of the connection when it is on this host, in
	// the same network namespace (loopback, or the socket's own address):
	// the client that closed, and who holds it; nil otherwise.
	Peer *PeerSocket

	// lost
	Lost LostCounts

	// destroyed, not_destroyed (tcptrace kill; AgeNS and AgeKnown as for
	// stuck): how, and why not. accept_failed: emfile or enfile.
	Method string
	Reason string

	// listen_drops: connections the listener dropped within the last
	// DropIntervalNS (Listener, with its cumulative Drops, and NetNS,
	// CgroupID and the container context say which).
	Dropped        uint64
	DropIntervalNS int64

	// summary: the row as a JSON object (its fields are written after
	// time and event), and a one-line text of it for a table.
	Row     []byte
	RowText string

	// Correlation state, never written out. BootNS is Time as the kernel's
	// CLOCK_BOOTTIME; FinBootNS when the FIN arrived (0: unknown). Key is
	// the socket's key in the kernel's tables, and KernelTracked says a
	// close_wait socket made it into the kernel's CLOSE-WAIT table.
	BootNS        int64
	FinBootNS     int64
	Key           uint64
	KernelTracked bool
}

// Listener is a listening socket, the one a socket not yet accepted waits
// in: its accept queue now, the queue's limit (the listen backlog), and
// the processes that hold it, which are the ones that do not accept.
type Listener struct {
	Local   netip.AddrPort
	Inode   uint64
	Queue   uint32
	Backlog uint32
	// Drops counts the connections the listener dropped because a queue
	// was full, since it was created (the kernel's sk_drops of it).
	Drops uint64
	// CgroupID is the cgroup v2 id of the process that created it (0:
	// unknown, before Linux 5.9).
	CgroupID uint64
	Owners   []Owner
}

// AcceptFailure counts one process's accept() failures on one listener
// for one reason (emfile, enfile) since tcptrace started, as the kernel
// counted them.
type AcceptFailure struct {
	PID      uint32
	Comm     string
	NetNS    uint32
	Port     uint16
	Reason   string
	Count    uint64
	CgroupID uint64 // the listener's
	FirstNS  int64  // CLOCK_BOOTTIME of the first
}

// PeerSocket is the local other end of a connection: its address (the
// connection's remote one), its state (FIN_WAIT2 for a client that closed
// first), its inode (0 when no file holds it: a client that closed its
// descriptor) and the processes that hold it.
type PeerSocket struct {
	Local  netip.AddrPort
	State  State
	Inode  uint64
	Owners []Owner
}

// K8s names the Kubernetes pod a socket belongs to.
type K8s struct {
	Node      string
	Namespace string // empty with NotFound
	Pod       string
	Container string // empty when the container id matched no status
	// The pod's owning workload from its owner references, a
	// ReplicaSet's Deployment resolved (empty without an owner).
	WorkloadKind string
	WorkloadName string
	// NotFound: enrichment is on but the pod was not in the cache (not yet
	// seen, or deleted longer ago than the grace period).
	NotFound bool
}
