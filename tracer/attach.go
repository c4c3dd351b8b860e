package tracer

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/oneline"
)

// Attach chooses the kernel hook for inet_sock_set_state.
type Attach string

const (
	// AttachAuto tries tp_btf first and falls back to the classic tracepoint.
	AttachAuto Attach = "auto"
	// AttachTPBTF uses the BTF-typed raw tracepoint: no tracefs needed.
	AttachTPBTF Attach = "tp_btf"
	// AttachTracepoint uses the classic tracepoint; tracefs is mounted if missing.
	AttachTracepoint Attach = "tracepoint"
)

// candidate is one way to hook the state machine, tried in order.
type candidate struct {
	point  string // what users see, e.g. tp_btf/inet_sock_set_state
	prog   string // program name in the object file
	cookie bool   // the program may call bpf_get_socket_cookie
	// Classic tracepoint programs must not allocate map memory at run
	// time: refused on PREEMPT_RT and a kernel warning before Linux 6.1.
	prealloc bool
	attach   func(*ebpf.Program) (link.Link, error)
}

func (c candidate) String() string {
	if c.cookie {
		return c.point + " (socket cookie)"
	}
	return c.point
}

var (
	tpBTFWithCookie = candidate{
		point: "tp_btf/inet_sock_set_state", prog: "tcptrace_set_state_btf", cookie: true,
		attach: attachTPBTF,
	}
	// Tracing programs may call bpf_get_socket_cookie only from Linux 5.12.
	tpBTF = candidate{
		point: "tp_btf/inet_sock_set_state", prog: "tcptrace_set_state_btf",
		attach: attachTPBTF,
	}
	tracepoint = candidate{
		point: "tracepoint/sock/inet_sock_set_state", prog: "tcptrace_set_state_tp", prealloc: true,
		attach: attachTracepoint,
	}
)

func (a Attach) candidates() ([]candidate, error) {
	switch a {
	case "", AttachAuto:
		return []candidate{tpBTFWithCookie, tpBTF, tracepoint}, nil
	case AttachTPBTF:
		return []candidate{tpBTFWithCookie, tpBTF}, nil
	case AttachTracepoint:
		return []candidate{tracepoint}, nil
	}
	return nil, fmt.Errorf("unknown attach point %q (want auto, tp_btf or tracepoint)", string(a))
}

func attachTPBTF(prog *ebpf.Program) (link.Link, error) {
	return link.AttachTracing(link.TracingOptions{Program: prog})
}

func attachTracepoint(prog *ebpf.Program) (link.Link, error) {
	if err := ensureTracefs(); err != nil {
		return nil, err
	}
	return link.Tracepoint("sock", "inet_sock_set_state", prog, nil)
}

// ensureTracefs mounts tracefs where the kernel expects it when no tracefs
// is mounted. cilium/ebpf caches its tracefs lookup, so this must run before
// the first tracepoint attach of the process.
func ensureTracefs() error {
	for _, m := range []struct {
		path  string
		magic int64
	}{
		{"/sys/kernel/tracing", unix.TRACEFS_MAGIC},
		{"/sys/kernel/debug/tracing", unix.TRACEFS_MAGIC},
		{"/sys/kernel/debug/tracing", unix.DEBUGFS_MAGIC},
	} {
		var st unix.Statfs_t
		if unix.Statfs(m.path, &st) == nil && int64(st.Type) == m.magic {
			return nil
		}
	}
	if err := unix.Mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
		if errors.Is(err, unix.EPERM) {
			err = fmt.Errorf("%w: %w (needs CAP_SYS_ADMIN; or mount it first: mount -t tracefs tracefs /sys/kernel/tracing)", ErrPrivilege, err)
		}
		return fmt.Errorf("no tracefs mounted, and cannot mount it at /sys/kernel/tracing: %w", err)
	}
	return nil
}

// loadAndAttach tries each candidate until one loads and attaches.
func (t *Tracer) loadAndAttach() error {
	cands, err := t.cfg.Attach.candidates()
	if err != nil {
		return err
	}
	spec, err := loadTcptrace()
	if err != nil {
		return fmt.Errorf("load eBPF object: %w", err)
	}
	memlockErr := removeMemlock()

	var failures []error
	for _, c := range cands {
		err := t.tryCandidate(spec.Copy(), c)
		if err == nil {
			t.point, t.cookie = c.point, c.cookie
			return nil
		}
		t.cfg.Logger.Debug("attach point unusable", "candidate", c.String(), "error", err)
		failures = append(failures, fmt.Errorf("%s: %w", c, err))
	}
	return fmt.Errorf("no usable attach point: %w", oneline.Join(append(failures, memlockErr)...))
}

// removeMemlock lifts RLIMIT_MEMLOCK, to which only kernels before 5.11
// charge eBPF memory; its error explains a load that fails after it.
func removeMemlock() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raise RLIMIT_MEMLOCK (needs CAP_SYS_RESOURCE on kernels before 5.11): %w", err)
	}
	return nil
}

// wakeupStepMin keeps the wake-up step above the size of one ring-buffer
// record (a power of two, as the programs mask with it).
const wakeupStepMin = 256

// The iterator programs: the start-up snapshot (iter/tcp) and the scan of
// the CLOSE-WAIT table (iter/bpf_map_elem).
const (
	snapshotProg = "tcptrace_snapshot"
	scanProg     = "tcptrace_scan"
)

// Bounds of the cw_overflow LRU map (see bpf/tcptrace.bpf.c).
const (
	overflowPerTracked = 64
	maxOverflow        = 16384
)

func (t *Tracer) tryCandidate(spec *ebpf.CollectionSpec, c candidate) error {
	mode, closewaitSize := uint8(kernModeCloseWait), t.cfg.MaxTracked
	if t.cfg.Mode == ModeTrace {
		mode, closewaitSize = kernModeTrace, 1
	}
	spec.Maps["closewait"].MaxEntries = closewaitSize
	// Consulted only while a listing runs: it needs to hold the sockets
	// that overflow the table meanwhile, not a leak's worth.
	spec.Maps["cw_overflow"].MaxEntries = min(closewaitSize*overflowPerTracked, maxOverflow)
	if c.prealloc {
		spec.Maps["closewait"].Flags &^= unix.BPF_F_NO_PREALLOC
	}
	spec.Maps["events"].MaxEntries = t.cfg.RingBufBytes
	spec.Maps["aggregates"].MaxEntries = t.cfg.MaxAggregates
	emitAll := t.cfg.EmitAll
	if t.cfg.Mode == ModeTrace {
		spec.Maps["aggregates"].MaxEntries = 1
		emitAll = true
	}
	for name, value := range map[string]any{
		"mode":         mode,
		"filter_ports": len(t.cfg.Ports) > 0,
		"use_cookie":   c.cookie,
		// bpf_get_current_task_btf came in 5.11, socket cookies for
		// tp_btf in 5.12: a kernel that takes the one has the other.
		"use_task_btf": c.cookie,
		// Wake the reader early only when a quarter of the ring is used;
		// otherwise it polls every FlushInterval. While it stays behind,
		// wake it again every 1/32 of the ring.
		"wakeup_bytes":        uint64(t.cfg.RingBufBytes / 4),
		"wakeup_step":         uint64(max(t.cfg.RingBufBytes/32, wakeupStepMin)),
		"emit_all":            emitAll,
		"emit_floor_ns":       uint64(t.cfg.EmitFloor.Nanoseconds()),
		"filter_netns":        t.cfg.NetNS,
		"filter_cgroup_id":    t.cfg.CgroupID,
		"filter_cgroup_level": t.cfg.CgroupLevel,
	} {
		if err := spec.Variables[name].Set(value); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	if err := spec.Variables["port_bits"].Set(portBits(t.cfg.Ports)); err != nil {
		return fmt.Errorf("set port_bits: %w", err)
	}
	coll, err := t.loadCollection(onlyProgram(spec, c.prog))
	if err != nil {
		return fmt.Errorf("load: %w", shortVerifierError(err))
	}
	if t.cfg.Mode == ModeCloseWait {
		if err := insertOverflowKey(coll.Maps["aggregates"]); err != nil {
			coll.Close()
			return err
		}
	}
	l, err := c.attach(coll.Programs[c.prog])
	if err != nil {
		coll.Close()
		return fmt.Errorf("attach: %w", err)
	}
	t.coll, t.prog, t.link = coll, coll.Programs[c.prog], l
	if t.cfg.Mode == ModeCloseWait {
		t.loadSnapshot(spec)
		t.loadScan(spec)
		t.loadFollowResets(spec, c)
		t.loadAcceptFailures(spec)
	}
	return nil
}

// The tcp_destroy_sock programs, by the kind of hook of the state program.
const (
	destroyProgBTF = "tcptrace_destroy_btf"
	destroyProgTP  = "tcptrace_destroy_tp"
)

// loadFollowResets attaches the program that sees a TCP socket's end
// (tcp:tcp_destroy_sock) on the same kind of hook as the state program, and
// then tells the state program to follow a socket the peer resets while
// the application holds it: its close is the application's, when it closes
// the descriptor. Without it (the hook refused) such a reset is an abort,
// as before.
func (t *Tracer) loadFollowResets(spec *ebpf.CollectionSpec, c candidate) {
	prog, attach := destroyProgBTF, attachTPBTF
	if c.prealloc {
		prog, attach = destroyProgTP, attachTracepointDestroy
	}
	coll, l, err := t.loadOn(spec, prog, attach)
	if err == nil {
		if err = t.coll.Variables["follow_resets"].Set(uint32(1)); err != nil {
			l.Close()
			coll.Close()
		}
	}
	if err != nil {
		t.cfg.Logger.Info("the kernel refused the program that sees a socket's end (tcp_destroy_sock): a peer's reset of a "+
			"socket its application still holds counts as an abort, not as the application's later close",
			"reason", rootCause(err))
		t.cfg.Logger.Debug("tcp_destroy_sock program refused", "error", shortVerifierError(err))
		return
	}
	t.destroyColl, t.destroyLink = coll, l
}

func attachTracepointDestroy(prog *ebpf.Program) (link.Link, error) {
	return link.Tracepoint("tcp", "tcp_destroy_sock", prog, nil)
}

// loadOn loads one more program on the maps already loaded and attaches it.
func (t *Tracer) loadOn(spec *ebpf.CollectionSpec, prog string, attach func(*ebpf.Program) (link.Link, error)) (*ebpf.Collection, link.Link, error) {
	coll, err := t.loadProgramsOn(spec, prog)
	if err != nil {
		return nil, nil, err
	}
	l, err := attach(coll.Programs[prog])
	if err != nil {
		coll.Close()
		return nil, nil, fmt.Errorf("attach %s: %w", spec.Programs[prog].SectionName, err)
	}
	return coll, l, nil
}

// loadProgramsOn loads programs of spec on the maps already loaded.
func (t *Tracer) loadProgramsOn(spec *ebpf.CollectionSpec, progs ...string) (*ebpf.Collection, error) {
	spec = onlyProgram(spec, progs...)
	replacements := make(map[string]*ebpf.Map)
	for name := range spec.Maps {
		if m, ok := t.coll.Maps[name]; ok {
			replacements[name] = m
		}
	}
	return ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replacements})
}

// onlyProgram returns a copy of spec without the programs other than
// those named.
func onlyProgram(spec *ebpf.CollectionSpec, names ...string) *ebpf.CollectionSpec {
	spec = spec.Copy()
	for n := range spec.Programs {
		if !slices.Contains(names, n) {
			delete(spec.Programs, n)
		}
	}
	return spec
}

// loadIter loads an iterator program on the maps already loaded and
// attaches it, to map m when not nil.
func (t *Tracer) loadIter(spec *ebpf.CollectionSpec, prog string, m *ebpf.Map) (*ebpf.Collection, *link.Iter, error) {
	var iter *link.Iter
	coll, _, err := t.loadOn(spec, prog, func(p *ebpf.Program) (link.Link, error) {
		var err error
		iter, err = link.AttachIter(link.IterOptions{Program: p, Map: m})
		return iter, err
	})
	return coll, iter, err
}

// loadSnapshot loads the snapshot iterator. It needs Linux 5.9 (iter/tcp);
// without it tcptrace only misses the sockets that were in CLOSE-WAIT before
// it started, so failure is logged, not fatal.
func (t *Tracer) loadSnapshot(spec *ebpf.CollectionSpec) {
	coll, iter, err := t.loadIter(spec, snapshotProg, nil)
	if err != nil {
		t.cfg.Logger.Warn("start-up snapshot unavailable: sockets already in CLOSE-WAIT are not reported", "error", shortVerifierError(err))
		return
	}
	t.snapshotColl, t.snapshotIter = coll, iter
}

// loadScan loads the iterator that reads the CLOSE-WAIT table in the kernel
// (Linux 5.9). Without it ScanCloseWait reads the whole table.
func (t *Tracer) loadScan(spec *ebpf.CollectionSpec) {
	coll, iter, err := t.loadIter(spec, scanProg, t.coll.Maps["closewait"])
	if err != nil {
		logScanRefused(t.cfg.Logger, err)
		return
	}
	t.scanColl, t.scanIter = coll, iter
}

// logScanRefused says that the scan iterator was refused. Nothing is lost
// and nobody need act: that in plain words at INFO, and the verifier's
// lines at DEBUG for whoever looks into the kernel.
func logScanRefused(log *slog.Logger, err error) {
	log.Info("the kernel refused the program that picks due sockets out of the CLOSE-WAIT table; "+
		"tcptrace reads the whole table from user space instead: the same reports, more CPU per scan when "+
		"many sockets are in CLOSE-WAIT; no action needed", "reason", rootCause(err))
	log.Debug("in-kernel table scan refused", "error", shortVerifierError(err))
}

// rootCause is err without the verifier's log: "operation not permitted".
func rootCause(err error) string {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) && ve.Cause != nil {
		return ve.Cause.Error()
	}
	return err.Error()
}

// shortVerifierError keeps the last lines of a verifier log, which say why
// a program was refused, instead of the whole log.
func shortVerifierError(err error) error {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) || len(ve.Log) == 0 {
		return err
	}
	log := ve.Log
	if len(log) > 3 {
		log = log[len(log)-3:]
	}
	return fmt.Errorf("%w: %s", ve.Cause, strings.Join(log, "; "))
}

// portBits is the --port filter as the programs read it: bit p of the
// bitmap set for each port p.
func portBits(ports []uint16) [65536 / 64]uint64 {
	var bits [65536 / 64]uint64
	for _, p := range ports {
		bits[p/64] |= 1 << (p % 64)
	}
	return bits
}
