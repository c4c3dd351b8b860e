package report

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// sampleListeners lists the listeners and keeps each one's drop counts
// over the window, thinned as the rows' rates are (rateSteps).
func (b *Builder) sampleListeners(now time.Time) {
	if b.cfg.Listeners == nil {
		return
	}
	byNS, err := b.cfg.Listeners()
	b.listenMu.Lock()
	defer b.listenMu.Unlock()
	b.listening, b.listenAt, b.listenErr = byNS, now, err
	next := make(map[listenerKey][]dropSample, len(b.dropSeries))
	step := b.cfg.Window / rateSteps
	for ns, ls := range byNS {
		for _, l := range ls {
			k := listenerKey{ns, l.Inode}
			s := b.dropSeries[k]
			if n := len(s); n > 0 && l.Drops < s[n-1].drops {
				s = nil // another socket at the same inode
			}
			if n := len(s); n == 0 || now.Sub(s[n-1].t) >= step {
				s = append(s, dropSample{now, l.Drops})
			} else {
				s[n-1] = dropSample{s[n-1].t, l.Drops}
			}
			cut := 0
			for cut < len(s)-1 && now.Sub(s[cut].t) > b.cfg.Window {
				cut++
			}
			next[k] = slices.Delete(s, 0, cut)
		}
	}
	b.dropSeries = next
}

// listenersNow is the report's Listeners: those with a queue or drops in
// the window, from the last sample (listed now when there was none, or it
// is older than the window).
func (b *Builder) listenersNow(now time.Time, errs *[]error) ([]Listener, int) {
	out := []Listener{}
	if b.cfg.Listeners == nil {
		return out, 0
	}
	b.listenMu.Lock()
	stale := b.listenAt.IsZero() || now.Sub(b.listenAt) > b.cfg.Window
	b.listenMu.Unlock()
	if stale {
		b.sampleListeners(now)
	}
	b.listenMu.Lock()
	defer b.listenMu.Unlock()
	if b.listenErr != nil {
		*errs = append(*errs, fmt.Errorf("list listeners: %w", b.listenErr))
	}
	for ns, ls := range b.listening {
		for _, l := range ls {
			var perMin float64
			if s := b.dropSeries[listenerKey{ns, l.Inode}]; len(s) > 1 {
				first, last := s[0], s[len(s)-1]
				if d := last.t.Sub(first.t); d > 0 && last.drops > first.drops {
					perMin = float64(last.drops-first.drops) / d.Minutes()
				}
			}
			if l.Queue == 0 && perMin == 0 {
				continue
			}
			var w Workload
			if b.names != nil {
				w = b.workload(l.CgroupID, now)
			}
			out = append(out, Listener{
				Addr: l.Local.String(), NetNS: ns, Workload: w,
				Queue: l.Queue, Limit: l.Backlog, Drops: l.Drops, DropsPerMinute: perMin,
			})
		}
	}
	slices.SortFunc(out, func(x, y Listener) int {
		return cmp.Or(cmp.Compare(y.DropsPerMinute, x.DropsPerMinute), cmp.Compare(y.Queue, x.Queue),
			cmp.Compare(x.Addr, y.Addr), cmp.Compare(x.NetNS, y.NetNS))
	})
	omitted := 0
	if len(out) > b.cfg.MaxListeners {
		omitted = len(out) - b.cfg.MaxListeners
		out = out[:b.cfg.MaxListeners]
	}
	return out, omitted
}
