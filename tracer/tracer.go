// Package tracer loads tcptrace's eBPF programs, attaches them at the best
// hook the running kernel allows, and delivers decoded events.
package tracer

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
)

// Mode selects what the kernel sends to user space.
type Mode uint8

const (
	// ModeCloseWait sends only sockets entering and leaving CLOSE-WAIT.
	ModeCloseWait Mode = iota
	// ModeTrace sends every TCP state transition.
	ModeTrace
)

// Values of enum mode (bpf/tcptrace.h).
const (
	kernModeCloseWait = 0
	kernModeTrace     = 1
)

// Defaults for Config fields left zero.
const (
	DefaultMaxTracked    = 262144
	DefaultRingBufBytes  = 4 << 20
	DefaultQueueLen      = 4096
	DefaultFlushInterval = 100 * time.Millisecond
	DefaultMaxAggregates = 4096
	maxPorts             = 64
)

// Config says what to trace.
type Config struct {
	Mode   Mode
	Ports  []uint16 // only sockets with one of these local or remote ports; empty: all
	Attach Attach   // AttachAuto picks the best hook the kernel allows
	// MaxTracked bounds the kernel's table of CLOSE-WAIT sockets (closewait
	// mode) or the table of when each socket entered its state (trace mode).
	MaxTracked uint32
	// RingBufBytes is the ring buffer size; a power of two, multiple of the page size.
	RingBufBytes uint32
	// QueueLen bounds the queue between the ring-buffer reader and the
	// consumer, in events (batches of 64, at least 2 batches).
	QueueLen int
	// FlushInterval bounds how long an event may wait in the ring buffer:
	// wake-ups are batched and the reader polls at this interval.
	FlushInterval time.Duration

	// Closewait mode. EmitAll sends a record for every socket entering and
	// leaving CLOSE-WAIT. Otherwise a socket the kernel table tracks sends
	// nothing unless it aborts or closes EmitFloor or more after the FIN;
	// user space finds the others with ScanCloseWait, and the kernel
	// counts them all in Aggregates.
	EmitAll   bool
	EmitFloor time.Duration
	// MaxAggregates bounds the kernel's aggregate table (keys: socket
	// cgroup, service port, direction); the excess is counted under one
	// overflow key.
	MaxAggregates uint32
	// Filters on sockets entering CLOSE-WAIT, applied in the kernel: a
	// network namespace inode, and a cgroup v2 id (the cgroup's directory
	// inode) at CgroupLevel below the root, which matches its descendants.
	// Zero: no filter.
	NetNS       uint32
	CgroupID    uint64
	CgroupLevel uint32
	// PinTable keeps the kernel's CLOSE-WAIT table pinned in bpffs at
	// PinDir (DefaultPinDir when empty) when the tracer closes, and adopts
	// a table pinned there at New: sockets keep their FIN time across a
	// restart. Without it nothing is pinned.
	PinTable bool
	PinDir   string

	Logger *slog.Logger
}

// DefaultPinDir is where PinTable pins the CLOSE-WAIT table.
const DefaultPinDir = "/sys/fs/bpf/tcptrace"

func (c *Config) setDefaults() {
	if c.MaxTracked == 0 {
		c.MaxTracked = DefaultMaxTracked
	}
	if c.RingBufBytes == 0 {
		c.RingBufBytes = DefaultRingBufBytes
	}
	if c.QueueLen == 0 {
		c.QueueLen = DefaultQueueLen
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.MaxAggregates == 0 {
		c.MaxAggregates = DefaultMaxAggregates
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	if c.Mode != ModeCloseWait && c.Mode != ModeTrace {
		return fmt.Errorf("unknown mode %d", c.Mode)
	}
	if len(c.Ports) > maxPorts {
		return fmt.Errorf("at most %d ports can be filtered, got %d", maxPorts, len(c.Ports))
	}
	for _, p := range c.Ports {
		if p == 0 {
			return errors.New("port 0 cannot be filtered")
		}
	}
	if _, err := c.Attach.candidates(); err != nil {
		return err
	}
	pageSize := uint32(os.Getpagesize())
	if n := c.RingBufBytes; n&(n-1) != 0 || n%pageSize != 0 {
		return fmt.Errorf("ring buffer size %d is not a power of two multiple of the page size %d", n, pageSize)
	}
	if c.QueueLen < 1 {
		return fmt.Errorf("queue length %d is below 1", c.QueueLen)
	}
	if c.FlushInterval < time.Millisecond {
		return fmt.Errorf("flush interval %v is below 1ms", c.FlushInterval)
	}
	if c.EmitFloor < 0 {
		return fmt.Errorf("emit floor %v is negative", c.EmitFloor)
	}
	if c.MaxAggregates < 2 {
		return fmt.Errorf("aggregate table of %d entries: want at least 2", c.MaxAggregates)
	}
	return nil
}

// Tracer owns the loaded eBPF objects, the link and the ring-buffer reader.
type Tracer struct {
	cfg    Config
	clock  bootclock.Clock
	dec    *decoder
	coll   *ebpf.Collection
	prog   *ebpf.Program
	link   link.Link
	reader *ringbuf.Reader
	point  string

	// Start-up snapshot (closewait mode, Linux 5.9+); nil when unavailable.
	snapshotColl *ebpf.Collection
	snapshotIter *link.Iter
	// Scan of the CLOSE-WAIT table in the kernel (Linux 5.9); nil when
	// unavailable.
	scanColl *ebpf.Collection
	scanIter *link.Iter
	// The end of a socket (tcp_destroy_sock), for the application's close
	// of a socket its peer reset; nil when unavailable.
	destroyColl *ebpf.Collection
	destroyLink link.Link
	// accept() failing for want of a descriptor (syscall tracepoints);
	// nil when unavailable.
	acceptColl  *ebpf.Collection
	acceptLinks []link.Link
	cookie      bool // sock ids are socket cookies
	listeners   listenerCache
	listening   listeningCache

	// Time in the previous state, for trace mode; nil in closewait mode.
	states *stateClock

	// queue carries batches of events from the ring-buffer reader to the
	// consumer, and free brings the consumed ones back (Recycle): a fixed
	// set of batches, so steady traffic allocates nothing, and a channel
	// operation and goroutine hand-off per batch, not per event. When no
	// batch is free the reader waits, and the ring buffer, which stores a
	// record in a third of the space, absorbs the rest: losses then happen,
	// and are counted, in the kernel. closing releases a waiting reader at
	// Close.
	queue      chan []events.Event
	free       chan []events.Event
	closing    chan struct{}
	decodeErrs atomic.Uint64
	// Sockets the start-up snapshot found in CLOSE-WAIT with no room in the
	// kernel table.
	snapshotUntracked atomic.Uint64
	readErr           error // set by the read loop before it closes queue

	// Buffers of ScanCloseWait, reused: a leak can fill the table.
	scanKeys []uint64
	scanVals [][cwEntrySize]byte
	scanBuf  []byte

	// The pinned table (PinTable): its directory, locked while we use it,
	// and whether an adopted table awaits pruning by Snapshot. startBoot
	// tells adopted entries from ours.
	pinDir       string
	pinLock      *os.File
	adoptPending bool
	startBoot    int64

	detachOnce sync.Once
	detachErr  error
	stopOnce   sync.Once
	closeOnce  sync.Once
	closeErr   error
}

// New checks privileges and kernel support, loads the programs, attaches
// them and starts reading. On error nothing stays loaded or attached.
func New(cfg Config) (_ *Tracer, err error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	if err := checkKernel(); err != nil {
		return nil, err
	}
	t := &Tracer{
		cfg:     cfg,
		clock:   bootclock.New(),
		closing: make(chan struct{}),
	}
	batches := max(2, cfg.QueueLen/batchLen)
	t.queue = make(chan []events.Event, batches)
	t.free = make(chan []events.Event, batches)
	for range batches {
		t.free <- make([]events.Event, 0, batchLen)
	}
	t.dec = newDecoder(t.clock)
	if cfg.Mode == ModeTrace {
		t.states = newStateClock(int(cfg.MaxTracked))
	}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()

	t.startBoot = bootclock.Now()
	if cfg.PinTable && cfg.Mode == ModeCloseWait {
		if t.adoptPending, err = t.preparePin(); err != nil {
			return nil, err
		}
	}
	if err := t.loadAndAttach(); err != nil {
		return nil, err
	}
	if t.adoptPending && t.snapshotIter == nil {
		cfg.Logger.Warn("cannot adopt the pinned CLOSE-WAIT table without a socket listing (Linux 5.9+): starting afresh")
		if err := t.dropAdopted(); err != nil {
			return nil, fmt.Errorf("empty the pinned table: %w", err)
		}
		t.adoptPending = false
	}
	t.reader, err = ringbuf.NewReader(t.coll.Maps["events"])
	if err != nil {
		return nil, fmt.Errorf("open ring buffer reader: %w", err)
	}
	go t.readLoop()
	// The kernel's BTF, parsed for CO-RE, is the bulk of the start-up
	// heap and is not needed once the programs are loaded.
	btf.FlushKernelSpec()
	debug.FreeOSMemory()
	// Logged only once events flow: scripts and tests wait for this line.
	cfg.Logger.Info("attached", "point", t.point, "socket_cookie", t.cookie, "goroutines", runtime.NumGoroutine())
	return t, nil
}

// AttachPoint names the hook in use, e.g. "tp_btf/inet_sock_set_state".
func (t *Tracer) AttachPoint() string { return t.point }

// SocketCookie reports whether events identify sockets by the kernel's
// socket cookie (tp_btf from Linux 5.12) rather than a hash of the socket's
// address.
func (t *Tracer) SocketCookie() bool { return t.cookie }

// ScansInKernel reports whether ScanCloseWait walks the table in the kernel
// and hands each entry over once (Linux 5.9), rather than reading it whole.
func (t *Tracer) ScansInKernel() bool { return t.scanIter != nil }

// FollowsResets reports whether a socket the peer resets in CLOSE-WAIT
// while its application holds it is followed until the application closes
// it (an app_close with PeerReset), rather than reported as an abort.
func (t *Tracer) FollowsResets() bool { return t.destroyLink != nil }

// CanList reports whether the kernel can list sockets (iter/tcp, Linux
// 5.9), for Snapshot and Inodes; false in trace mode.
func (t *Tracer) CanList() bool { return t.snapshotIter != nil }

// Clock is the boot-time to wall-time conversion the tracer uses.
func (t *Tracer) Clock() bootclock.Clock { return t.clock }

// Events delivers decoded events in batches, in order. It is closed after
// Stop once every event already in the ring buffer has been delivered, or
// on a read error (see Err). Hand each batch back with Recycle once done
// with it: the reader waits for a free batch.
func (t *Tracer) Events() <-chan []events.Event { return t.queue }

// Recycle returns a batch received from Events for reuse. Nothing in it may
// be used afterwards.
func (t *Tracer) Recycle(batch []events.Event) {
	select {
	case t.free <- batch[:0]:
	default: // not one of ours, or returned twice
	}
}

// batchLen is the most events a batch holds. A batch is sent when full or
// when the ring buffer has been read empty, so batching adds no latency.
const batchLen = 64

// Err reports why Events was closed, nil after a normal Stop. Call it only
// after Events is closed.
func (t *Tracer) Err() error { return t.readErr }

func (t *Tracer) readLoop() {
	defer close(t.queue)
	var rec ringbuf.Record
	var batch []events.Event
	select {
	case batch = <-t.free:
	case <-t.closing:
		return
	}
	// send hands the batch to the consumer and takes a free one; false
	// once the tracer is closing.
	send := func() bool {
		if len(batch) == 0 {
			return true
		}
		select {
		case t.queue <- batch:
		case <-t.closing:
			return false
		}
		select {
		case batch = <-t.free:
			return true
		case <-t.closing:
			return false
		}
	}
	t.reader.SetDeadline(time.Now().Add(t.cfg.FlushInterval))
	for {
		err := t.reader.ReadInto(&rec)
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The programs submit without waking us; this is the poll tick,
			// and the ring was just read empty: tell the consumer.
			batch = append(batch, progressMark())
			if !send() {
				return
			}
			t.reader.SetDeadline(time.Now().Add(t.cfg.FlushInterval))
			continue
		case errors.Is(err, ringbuf.ErrFlushed), errors.Is(err, ringbuf.ErrClosed):
			send()
			return
		default:
			t.readErr = fmt.Errorf("read ring buffer: %w", err)
			send()
			return
		}
		batch = batch[:len(batch)+1]
		if err := t.dec.decode(rec.RawSample, &batch[len(batch)-1]); err != nil {
			t.decodeErrs.Add(1)
			batch = batch[:len(batch)-1]
			continue
		}
		if t.states != nil {
			t.states.observe(&batch[len(batch)-1])
		}
		if (len(batch) == cap(batch) || t.reader.AvailableBytes() == 0) && !send() {
			return
		}
	}
}

// progressMargin covers a record still being written by a program that took
// its timestamp just before the ring was read empty.
const progressMargin = time.Millisecond

// progressMark tells the consumer that every event before now (less the
// margin) has been delivered, so it can act on the absence of events, such
// as reporting a socket stuck, without racing a close still in the ring.
func progressMark() events.Event {
	return events.Event{Kind: events.KindProgress, BootNS: bootclock.Now() - progressMargin.Nanoseconds()}
}

// InCloseWait reports whether the kernel's CLOSE-WAIT table still holds the
// socket of a close_wait event, for the same episode. False means its exit
// from CLOSE-WAIT happened but was lost. Meaningful only for events with
// KernelTracked set, in closewait mode.
func (t *Tracer) InCloseWait(ev *events.Event) (bool, error) {
	var entry tcptraceCwEntry
	err := t.coll.Maps["closewait"].Lookup(ev.Key, &entry)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up CLOSE-WAIT table: %w", err)
	}
	return int64(entry.FinNs) == ev.FinBootNS && entry.Sport == ev.LocalPort && entry.Dport == ev.RemotePort, nil
}

// Lost returns cumulative counts of dropped events by cause since New.
func (t *Tracer) Lost() (events.LostCounts, error) {
	var c events.LostCounts
	var perCPU []uint64
	m := t.coll.Maps["counters"]
	for key, cause := range map[tcptraceCounter]events.LostCause{
		tcptraceCounterCNT_RINGBUF_FULL: events.LostRingbufFull,
		tcptraceCounterCNT_MAP_FULL:     events.LostKernelTableFull,
	} {
		if err := m.Lookup(key, &perCPU); err != nil {
			return c, fmt.Errorf("read counter %d: %w", key, err)
		}
		for _, v := range perCPU {
			c[cause] += v
		}
	}
	stats, err := t.prog.Stats()
	if err != nil {
		return c, fmt.Errorf("read program stats: %w", err)
	}
	c[events.LostKernelTableFull] += t.snapshotUntracked.Load()
	if t.states != nil {
		c[events.LostTableFull] = t.states.evicted.Load()
	}
	c[events.LostRecursion] = stats.RecursionMisses
	c[events.LostDecode] = t.decodeErrs.Load()
	return c, nil
}

// AggregateOverflows counts sockets whose aggregate key found no room in
// the kernel's table and were counted under the overflow key instead.
func (t *Tracer) AggregateOverflows() (uint64, error) {
	var perCPU []uint64
	if err := t.coll.Maps["counters"].Lookup(tcptraceCounterCNT_AGG_FULL, &perCPU); err != nil {
		return 0, fmt.Errorf("read aggregate overflow counter: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// Stop detaches the programs so no new events are produced and makes the
// reader deliver what is left in the ring buffer, then close Events.
// It does not wait; drain Events to know when it is done.
func (t *Tracer) Stop() {
	t.stopOnce.Do(func() {
		if err := t.detach(); err != nil {
			t.cfg.Logger.Warn("detach failed", "error", err)
		}
		if t.reader != nil {
			if err := t.reader.Flush(); err != nil {
				// Without the flush the loop would block: close instead.
				t.reader.Close()
			}
		}
	})
}

// Close detaches and frees everything. It is idempotent and safe to call
// with or without Stop; events still queued are discarded.
func (t *Tracer) Close() error {
	t.closeOnce.Do(func() {
		close(t.closing)
		var errs []error
		if err := t.detach(); err != nil {
			errs = append(errs, err)
		}
		if t.reader != nil {
			if err := t.reader.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close ring buffer reader: %w", err))
			}
		}
		for _, it := range []struct {
			iter *link.Iter
			coll *ebpf.Collection
		}{{t.snapshotIter, t.snapshotColl}, {t.scanIter, t.scanColl}} {
			if it.iter != nil {
				if err := it.iter.Close(); err != nil {
					errs = append(errs, fmt.Errorf("close iterator: %w", err))
				}
				it.coll.Close()
			}
		}
		if t.acceptColl != nil {
			t.acceptColl.Close()
		}
		if t.destroyColl != nil {
			t.destroyColl.Close()
		}
		if t.coll != nil {
			t.coll.Close()
		}
		if t.pinLock != nil {
			t.pinLock.Close() // and with it the lock; the pin stays
		}
		t.closeErr = oneline.Join(errs...)
	})
	return t.closeErr
}

func (t *Tracer) detach() error {
	t.detachOnce.Do(func() {
		if t.link != nil {
			if err := t.link.Close(); err != nil {
				t.detachErr = fmt.Errorf("detach %s: %w", t.point, err)
			}
		}
		if t.destroyLink != nil {
			if err := t.destroyLink.Close(); err != nil && t.detachErr == nil {
				t.detachErr = fmt.Errorf("detach tcp_destroy_sock: %w", err)
			}
		}
		for _, l := range t.acceptLinks {
			if err := l.Close(); err != nil && t.detachErr == nil {
				t.detachErr = fmt.Errorf("detach the accept programs: %w", err)
			}
		}
	})
	return t.detachErr
}
