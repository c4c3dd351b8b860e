package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tcptrace/tcptrace/events"
)

// batchSize is how many entries one batch lookup reads. Large enough for
// any hash bucket (a smaller batch fails with ENOSPC), small enough that
// the buffers stay small: 80-byte entries make a 320 KiB read.
const batchSize = 4096

// Values of enum cw_flag (bpf/tcptrace.h).
const (
	cwfAgeUnknown = 1 << 0
	cwfCookie     = 1 << 1
)

// ScanCloseWait reads the kernel's table of sockets in CLOSE-WAIT and
// calls due with each whose FIN (or first sight, for sockets found at
// start-up) is at or before dueBoot, as a close_wait event: KernelTracked,
// with its FIN time and the inode it had then, unless known (if not nil)
// says the caller has it already. ev is reused after due returns. It
// returns how many sockets the table holds.
//
// From Linux 5.9 an iterator walks the table in the kernel and hands over
// each entry once: an entry handed over is marked, and later scans skip it
// without copying it out, so 100,000 sockets stuck and reported cost a scan
// little. Older kernels read the whole table and hand over every due entry
// each time. Every record of a scan is read: a marked entry is not offered
// again.
//
// A socket in the table has not left CLOSE-WAIT yet: the programs delete
// its entry before they report its exit. So a stuck report made from this
// table never overtakes a close, and a socket that closes later sends its
// record (its latency is past the threshold), which finds the report.
func (t *Tracer) ScanCloseWait(dueBoot int64, known func(sock uint64) bool, due func(ev *events.Event)) (int, error) {
	if t.cfg.Mode != ModeCloseWait {
		return 0, errors.New("no CLOSE-WAIT table in trace mode")
	}
	var ev events.Event
	var e tcptraceCwEntry
	hand := func(key uint64, raw []byte) {
		if int64(binary.LittleEndian.Uint64(raw)) > dueBoot {
			return
		}
		if known != nil && known(t.dec.sockID(key, raw[75]&cwfCookie != 0, binary.LittleEndian.Uint64(raw[8:]))) {
			return
		}
		decodeEntry(raw, &e)
		if err := t.entryEvent(key, &e, &ev); err != nil {
			t.decodeErrs.Add(1) // counted, as any undecodable record
			return
		}
		due(&ev)
	}
	if t.scanIter == nil {
		return t.readTable(hand)
	}
	ctl := tcptraceScanCtl{DueNs: uint64(max(dueBoot, 0))}
	m := t.coll.Maps["scan_control"]
	if err := m.Put(uint32(0), &ctl); err != nil {
		return 0, fmt.Errorf("set up the table scan: %w", err)
	}
	rc, err := t.scanIter.Open()
	if err != nil {
		return 0, fmt.Errorf("open the table scan: %w", err)
	}
	defer rc.Close()
	if t.scanBuf == nil {
		t.scanBuf = make([]byte, 256*scanRecSize)
	}
	buf, n := t.scanBuf, 0
	for {
		m, err := rc.Read(buf[n:])
		n += m
		whole := n - n%scanRecSize
		for off := 0; off < whole; off += scanRecSize {
			rec := buf[off : off+scanRecSize]
			hand(binary.LittleEndian.Uint64(rec), rec[8:])
		}
		n = copy(buf, buf[whole:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read the table scan: %w", err)
		}
	}
	if n != 0 {
		t.decodeErrs.Add(1) // a partial record: counted, as any undecodable one
	}
	if err := m.Lookup(uint32(0), &ctl); err != nil {
		return 0, fmt.Errorf("read the table scan's counts: %w", err)
	}
	return int(ctl.Total), nil
}

// ListCloseWait calls each with the sock id of every socket in the kernel's
// CLOSE-WAIT table: a whole read, to reconcile with what the caller tracks
// after records were lost.
func (t *Tracer) ListCloseWait(each func(sock uint64)) error {
	if t.cfg.Mode != ModeCloseWait {
		return errors.New("no CLOSE-WAIT table in trace mode")
	}
	_, err := t.readTable(func(key uint64, raw []byte) {
		each(t.dec.sockID(key, raw[75]&cwfCookie != 0, binary.LittleEndian.Uint64(raw[8:])))
	})
	return err
}

// readTable reads the whole CLOSE-WAIT table with batch lookups and calls
// visit with each entry's key and raw struct cw_entry.
func (t *Tracer) readTable(visit func(key uint64, raw []byte)) (int, error) {
	if t.scanKeys == nil {
		// Raw bytes: cilium/ebpf then copies them as they are, where a
		// struct slice would be unmarshalled field by field.
		t.scanKeys = make([]uint64, batchSize)
		t.scanVals = make([][cwEntrySize]byte, batchSize)
	}
	m := t.coll.Maps["closewait"]
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		n, err := m.BatchLookup(&cursor, t.scanKeys, t.scanVals, nil)
		done := errors.Is(err, ebpf.ErrKeyNotExist)
		if err != nil && !done {
			return total, fmt.Errorf("read CLOSE-WAIT table: %w", err)
		}
		total += n
		for i := range n {
			visit(t.scanKeys[i], t.scanVals[i][:])
		}
		if done {
			return total, nil
		}
	}
}

// Sizes of struct cw_entry and struct scan_rec; decode_test.go checks them.
const (
	cwEntrySize = 80
	scanRecSize = 8 + cwEntrySize
)

// decodeEntry decodes a struct cw_entry (bpf/tcptrace.h).
func decodeEntry(b []byte, e *tcptraceCwEntry) {
	le := binary.LittleEndian
	e.FinNs, e.Cookie, e.Ino, e.CgroupId = le.Uint64(b[0:]), le.Uint64(b[8:]), le.Uint64(b[16:]), le.Uint64(b[24:])
	copy(e.Saddr[:], b[32:48])
	copy(e.Daddr[:], b[48:64])
	e.Netns, e.Family, e.Sport, e.Dport = le.Uint32(b[64:]), le.Uint16(b[68:]), le.Uint16(b[70:]), le.Uint16(b[72:])
	e.Dir, e.Flags, e.PeerReset = b[74], b[75], b[offEntryPeerReset]
}

// entryEvent builds the close_wait event of a table entry.
func (t *Tracer) entryEvent(key uint64, e *tcptraceCwEntry, ev *events.Event) error {
	fin := int64(e.FinNs)
	*ev = events.Event{
		Kind: events.KindCloseWait, Time: t.clock.Wall(fin), BootNS: fin, FinBootNS: fin,
		Key: key, NetNS: e.Netns, Inode: e.Ino, CgroupID: e.CgroupId, Dir: events.Direction(e.Dir),
		LocalPort: e.Sport, RemotePort: e.Dport, OldState: events.StateEstablished, NewState: events.StateCloseWait,
		AgeKnown: e.Flags&cwfAgeUnknown == 0, KernelTracked: true,
	}
	ev.Sock = t.dec.sockID(key, e.Flags&cwfCookie != 0, e.Cookie)
	return setAddrs(ev, e.Family, e.Saddr[:], e.Daddr[:])
}

// Aggregates calls fn with each of the kernel's aggregates (closewait
// mode): counts and FIN-to-close histograms by socket cgroup, service port
// and direction, since New. a is reused after fn returns.
func (t *Tracer) Aggregates(fn func(a *events.Aggregate)) error {
	if t.cfg.Mode != ModeCloseWait {
		return errors.New("no aggregates in trace mode")
	}
	keys := make([]tcptraceAggKey, 256)
	vals := make([]tcptraceAggVal, 256)
	m := t.coll.Maps["aggregates"]
	var cursor ebpf.MapBatchCursor
	var a events.Aggregate
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		done := errors.Is(err, ebpf.ErrKeyNotExist)
		if err != nil && !done {
			return fmt.Errorf("read aggregates: %w", err)
		}
		for i := range n {
			k, v := &keys[i], &vals[i]
			if k.Dir == uint8(tcptraceDirectionDIR_OVERFLOW) && v.Entered == 0 {
				continue // the overflow key, never used
			}
			a = events.Aggregate{
				AggregateKey: events.AggregateKey{CgroupID: k.CgroupId, Port: k.Port, Dir: events.Direction(k.Dir)},
				Entered:      v.Entered, Closed: v.Closed, Aborted: v.Aborted, Hist: v.Hist,
				Sum: time.Duration(v.SumUs) * time.Microsecond,
			}
			fn(&a)
		}
		if done {
			return nil
		}
	}
}

// insertOverflowKey creates the aggregate that counts keys with no room
// of their own, so that it always exists.
func insertOverflowKey(m *ebpf.Map) error {
	k := tcptraceAggKey{Dir: uint8(tcptraceDirectionDIR_OVERFLOW)}
	var v tcptraceAggVal
	if err := m.Update(&k, &v, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("create the overflow aggregate: %w", err)
	}
	return nil
}

// DeleteAggregates removes kernel aggregates, those of cgroups that are
// gone: a removed key is created afresh if a socket of it shows up again.
// The overflow key is never removed.
func (t *Tracer) DeleteAggregates(keys []events.AggregateKey) error {
	if t.cfg.Mode != ModeCloseWait {
		return errors.New("no aggregates in trace mode")
	}
	m := t.coll.Maps["aggregates"]
	var errs []error
	for _, k := range keys {
		if k.Dir == events.DirOverflow {
			continue
		}
		kk := tcptraceAggKey{CgroupId: k.CgroupID, Port: k.Port, Dir: uint8(k.Dir)}
		if err := m.Delete(&kk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Table calls fn with every socket in the kernel's CLOSE-WAIT table, as a
// close_wait event whose Time is its FIN's (or first sight's, when not
// AgeKnown). Unlike the scans it marks nothing and shares no buffer, so
// any goroutine may call it (the HTTP API does); a map iteration, one
// lookup per entry. ev is reused after fn returns.
func (t *Tracer) Table(fn func(ev *events.Event)) error {
	if t.cfg.Mode != ModeCloseWait {
		return errors.New("no CLOSE-WAIT table in trace mode")
	}
	var (
		key uint64
		raw [cwEntrySize]byte
		e   tcptraceCwEntry
		ev  events.Event
	)
	it := t.coll.Maps["closewait"].Iterate()
	for it.Next(&key, &raw) {
		decodeEntry(raw[:], &e)
		if err := t.entryEvent(key, &e, &ev); err != nil {
			t.decodeErrs.Add(1)
			continue
		}
		fn(&ev)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read CLOSE-WAIT table: %w", err)
	}
	return nil
}
