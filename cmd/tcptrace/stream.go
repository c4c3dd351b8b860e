package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/urfave/cli/v2"

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
}

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
		case ev, ok := <-evs:
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
			if err := s.handle(&ev); err != nil {
				return err
			}
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
// tcptrace started, in every network namespace.
func (s *stream) snapshot() {
	found, err := s.tr.Snapshot()
	if err != nil {
		s.log.Warn("start-up snapshot incomplete", "error", err)
	}
	for i := range found {
		ev := &found[i]
		s.attr.Socket(ev)
		s.attr.Owners(ev) // one scan per namespace answers for all of them
		s.track.Observe(ev, s.emit)
	}
	s.log.Info("start-up snapshot", "close_wait_sockets", len(found))
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
	return s.track.Expire(nowBoot, s.stillInCloseWait, s.attr.Owners, s.emit)
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
	attrs := []any{"events", s.written, "lost", s.lost.Total()}
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
