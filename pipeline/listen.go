package pipeline

import (
	"time"

	"github.com/tcptrace/tcptrace/events"
)

// ListenerWatching is a source that lists the listening sockets it covers
// (the tracer), for listen_drops events.
type ListenerWatching interface {
	Listening() (map[uint32][]events.Listener, error)
}

// listenEventGap is the least time between two listen_drops events of
// one listener: a listener that drops on and off says so once a minute
// at most (the metric counts every drop).
const listenEventGap = time.Minute

type listenKey struct {
	netns uint32
	inode uint64
}

type listenState struct {
	drops     uint64
	rising    bool // drops rose at the last look
	lastEvent time.Time
}

// watchListeners looks at the listeners' drop counts and emits a
// listen_drops event for each listener whose drops rose since the last
// look after a look that saw none rise: when the drops start. A listener
// is first seen with the drops it has then (its history is not news):
// one that drops on, as a full queue does while clients retry, is
// reported at the next look. The state kept is the listeners of the last
// look only.
func (p *Pipeline) watchListeners(now time.Time) {
	lw, ok := p.src.(ListenerWatching)
	if !ok {
		return
	}
	byNS, err := lw.Listening()
	if err != nil {
		p.log.Debug("list listening sockets", "error", err)
	}
	next := make(map[listenKey]listenState, len(p.listens))
	interval := now.Sub(p.lastListen)
	for ns, ls := range byNS {
		for i := range ls {
			l := &ls[i]
			k := listenKey{ns, l.Inode}
			st, seen := p.listens[k]
			if !seen || l.Drops < st.drops {
				next[k] = listenState{drops: l.Drops, lastEvent: st.lastEvent}
				continue
			}
			d := l.Drops - st.drops
			if d > 0 && !st.rising && (st.lastEvent.IsZero() || now.Sub(st.lastEvent) >= listenEventGap) {
				p.emitListenDrops(now, ns, *l, d, interval)
				st.lastEvent = now
			}
			st.rising, st.drops = d > 0, l.Drops
			next[k] = st
		}
	}
	// A namespace that could not be listed this time keeps its state.
	for k, st := range p.listens {
		if _, ok := byNS[k.netns]; !ok {
			next[k] = st
		}
	}
	p.listens, p.lastListen = next, now
}

func (p *Pipeline) emitListenDrops(now time.Time, netns uint32, l events.Listener, dropped uint64, interval time.Duration) {
	ev := events.Event{Kind: events.KindListenDrops, Time: now, NetNS: netns, CgroupID: l.CgroupID, Inode: l.Inode,
		Dropped: dropped, DropIntervalNS: interval.Nanoseconds(), Listener: &l}
	p.attr.Socket(&ev)
	p.pendingDrops = append(p.pendingDrops, pendingDrop{ev: ev, giveUp: now.Add(p.maxOwnerWait())})
	p.retryListenDrops(now)
}

// pendingDrop is a listen_drops event waiting for its listener's holders:
// as a stuck report does, it waits (up to the owner wait) for a scan the
// resolver's budget does not allow yet, rather than name nobody.
type pendingDrop struct {
	ev      events.Event
	retryAt time.Time
	giveUp  time.Time
}

// retryListenDrops emits the pending listen_drops events whose holders
// are found, or whose wait is over.
func (p *Pipeline) retryListenDrops(now time.Time) {
	keep := p.pendingDrops[:0]
	for _, d := range p.pendingDrops {
		if now.Before(d.retryAt) {
			keep = append(keep, d)
			continue
		}
		ev := d.ev
		retry := p.attr.Owners(&ev) // the listener's holders
		if len(ev.Owners) == 0 && retry > 0 && now.Before(d.giveUp) {
			d.retryAt = now.Add(retry)
			keep = append(keep, d)
			continue
		}
		l := *ev.Listener
		l.Owners = ev.Owners
		ev.Inode, ev.Owners, ev.OwnerSource = 0, nil, 0
		ev.Listener = &l
		p.emit(&ev)
	}
	p.pendingDrops = keep
}

func (p *Pipeline) maxOwnerWait() time.Duration {
	if w := p.cfg.Track.MaxOwnerWait; w > 0 {
		return w
	}
	return DefaultMaxOwnerWait
}
