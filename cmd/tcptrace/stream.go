package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/attribute"
	"github.com/tcptrace/tcptrace/bootclock"
	"github.com/tcptrace/tcptrace/events"
	"github.com/tcptrace/tcptrace/internal/oneline"
	"github.com/tcptrace/tcptrace/output"
	"github.com/tcptrace/tcptrace/tracer"
	"github.com/tcptrace/tcptrace/track"
)

const (
	// tickInterval is how often buffered output is flushed when events
	// keep arriving.
	tickInterval = 100 * time.Millisecond
	// lostInterval is how often drop counters are read and reported.
	lostInterval = time.Second
)

func runTracer(c *cli.Context, mode tracer.Mode) error {
	o, err := parseOptions(c, mode)
	if err != nil {
		return err
	}
	logger := newLogger(c.App.ErrWriter, o.level)
	o.tracer.Logger = logger
	tr, err := tracer.New(o.tracer)
	if err != nil {
		return err
	}
	s := &stream{tr: tr, out: output.New(c.App.Writer, o.format), log: logger, attr: attribute.New(logger)}
	if mode == tracer.ModeCloseWait {
		if !tracer.Capable(unix.CAP_SYS_PTRACE) {
			logger.Warn("without CAP_SYS_PTRACE the descriptors of other processes cannot be read: owners will be unresolved")
		}
		s.track = track.New(o.track, tr.Clock())
		logger.Info("watching CLOSE-WAIT", "threshold", o.track.Threshold, "repeat", o.track.Repeat, "ports", o.tracer.Ports)
		s.snapshot()
	} else {
		logger.Info("tracing transitions", "ports", o.tracer.Ports)
	}
	runErr := s.run(c.Context)
	closeErr := tr.Close()
	s.summary()
	return oneline.Join(runErr, closeErr)
}

// stream moves events from the tracer through the tracker to the output.
type stream struct {
	tr    *tracer.Tracer
	track *track.Tracker // nil in trace mode
	attr  *attribute.Attributor
	out   *output.Writer
	log   *slog.Logger

	written  uint64
	lost     events.LostCounts // cumulative, as last reported
	writeErr error

	// Recent socket listings by network namespace, and the untracked
	// sockets they found, to adopt once the expiry pass is over.
	rescans map[uint32]rescan
	adopt   []events.Event
}

type rescan struct {
	at     time.Time
	inodes map[uint64]uint64
}

// rescanMaxAge is how long a listing of a namespace's sockets answers for
// all the stuck reports that need it.
const rescanMaxAge = time.Second

func (s *stream) run(ctx context.Context) error {
	tick := time.NewTicker(tickInterval)
	defer tick.Stop()
	lastLost := time.Now()
	done := ctx.Done()
	evs := s.tr.Events()
	var stoppedAt int64
	for s.writeErr == nil {
		select {
		case <-done:
			// Detach, then deliver what the ring buffer still holds.
			stoppedAt = bootclock.Now()
			s.tr.Stop()
			done = nil
		case batch, ok := <-evs:
			if !ok {
				// Everything the kernel produced before the detach has been
				// handled; after it, nothing is known.
				var err error
				if stoppedAt != 0 {
					err = s.expire(stoppedAt)
				}
				s.reportLost()
				s.flush()
				return oneline.Join(err, s.tr.Err(), s.writeErr)
			}
			for i := range batch {
				if err := s.handle(&batch[i]); err != nil {
					return err
				}
			}
			s.tr.Recycle(batch)
			if len(evs) == 0 {
				s.flush()
			}
		case <-tick.C:
			if time.Since(lastLost) >= lostInterval {
				s.reportLost()
				lastLost = time.Now()
			}
			s.flush()
		}
	}
	return s.writeErr
}

func (s *stream) handle(ev *events.Event) error {
	if ev.Kind == events.KindProgress {
		// Every event before ev.BootNS has been handled: stuck reports up to
		// then cannot overtake a close.
		return s.expire(ev.BootNS)
	}
	s.attr.Socket(ev)
	if s.track == nil {
		s.emit(ev)
		return nil
	}
	switch ev.Kind {
	case events.KindCloseWait:
		s.attr.CachedOwners(ev)
	case events.KindAppClose, events.KindAbort:
		s.attr.Closed(ev)
	}
	s.track.Observe(ev, s.emit)
	return nil
}

// snapshot reports and tracks the sockets that were in CLOSE-WAIT before
// tcptrace started, in every network namespace, as the listing reads them.
func (s *stream) snapshot() {
	n := 0
	err := s.tr.Snapshot(func(ev *events.Event) {
		s.adoptOne(ev)
		n++
	})
	if err != nil {
		s.log.Warn("start-up snapshot incomplete", "error", err)
	}
	s.log.Info("start-up snapshot", "close_wait_sockets", n)
}

// adoptFound tracks the sockets a rescan found in CLOSE-WAIT untracked.
func (s *stream) adoptFound() {
	for i := range s.adopt {
		s.adoptOne(&s.adopt[i])
	}
	s.adopt = nil
}

// adoptOne tracks a socket a listing found in CLOSE-WAIT untracked.
func (s *stream) adoptOne(ev *events.Event) {
	if s.track.Has(ev.Sock) {
		return // its close_wait event got here first
	}
	s.attr.Socket(ev)
	s.attr.Owners(ev) // one scan per namespace answers for all of them
	s.track.Observe(ev, s.emit)
}

// refreshOwners brings a stuck report's owners up to date. A socket that
// was still in its listener's accept queue when the FIN arrived had no
// file, hence no inode: list the namespace's sockets for its current one.
func (s *stream) refreshOwners(ev *events.Event) {
	if ev.Inode == 0 {
		ev.Inode = s.currentInode(ev)
	}
	s.attr.Owners(ev)
}

func (s *stream) currentInode(ev *events.Event) uint64 {
	r, ok := s.rescans[ev.NetNS]
	if !ok || time.Since(r.at) > rescanMaxAge {
		scan, err := s.tr.Rescan(ev.NetNS)
		if err != nil {
			s.log.Debug("list sockets for their inodes", "netns", ev.NetNS, "error", err)
		}
		if s.rescans == nil {
			s.rescans = make(map[uint32]rescan)
		}
		for ns, old := range s.rescans {
			if time.Since(old.at) > rescanMaxAge {
				delete(s.rescans, ns)
			}
		}
		r = rescan{at: time.Now(), inodes: scan.Inodes}
		s.rescans[ev.NetNS] = r
		s.adopt = append(s.adopt, scan.New...)
	}
	return r.inodes[ev.Sock]
}

func (s *stream) emit(ev *events.Event) {
	if s.writeErr != nil {
		return
	}
	if err := s.out.Write(ev); err != nil {
		s.writeErr = fmt.Errorf("write output: %w", err)
		return
	}
	s.written++
}

func (s *stream) flush() {
	if s.writeErr == nil {
		if err := s.out.Flush(); err != nil {
			s.writeErr = fmt.Errorf("write output: %w", err)
		}
	}
}

func (s *stream) expire(nowBoot int64) error {
	if s.track == nil {
		return nil
	}
	err := s.track.Expire(nowBoot, s.stillInCloseWait, s.refreshOwners, s.emit)
	s.adoptFound()
	return err
}

// stillInCloseWait checks a socket due for a stuck report against the
// kernel's table, when the kernel tracks it.
func (s *stream) stillInCloseWait(socket *events.Event) (bool, error) {
	if !socket.KernelTracked {
		return true, nil
	}
	return s.tr.InCloseWait(socket)
}

// reportLost emits a lost event with what was dropped since the last one.
func (s *stream) reportLost() {
	now, err := s.tr.Lost()
	if err != nil {
		s.log.Warn("read drop counters", "error", err)
		return
	}
	if s.track != nil {
		now[events.LostTableFull] = s.track.TableFull()
	}
	delta := now.Sub(s.lost)
	if delta.Total() == 0 {
		return
	}
	s.lost = now
	s.emit(&events.Event{Kind: events.KindLost, Time: time.Now(), Lost: delta})
}

func (s *stream) summary() {
	attrs := []any{"events", s.written, "lost", s.lost.Total(), "goroutines", runtime.NumGoroutine()}
	for cause, n := range s.lost {
		if n > 0 {
			attrs = append(attrs, events.LostCause(cause).String(), n)
		}
	}
	if s.track != nil {
		attrs = append(attrs, "still_in_close_wait", s.track.Len())
		if n := s.track.Vanished(); n > 0 {
			attrs = append(attrs, "close_wait_exits_missed", n)
		}
		st := s.attr.Stats()
		attrs = append(attrs, "owner_scans", st.FullScans, "owner_cache_hits", st.CacheHits)
	}
	s.log.Info("stopped", attrs...)
}
