// Package bootclock converts the kernel's CLOCK_BOOTTIME timestamps, which
// eBPF programs record, to wall-clock time.
//
// Ages and latencies never use the wall clock: they are differences of
// boot-clock timestamps, which a wall-clock step (NTP, a bad RTC at boot,
// date -s) does not move. Only the times written out are wall-clock times,
// and they follow a step within a second: the offset between the clocks
// is sampled again once the events' own timestamps are a second past the
// last sample, so a run that started before chrony stepped the clock does
// not stamp its events with the old time for weeks.
package bootclock

import (
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// resyncEvery is how far events' boot times go past the last sample of
// the offset before it is sampled again.
const resyncEvery = int64(time.Second)

// Clock maps boot-time nanoseconds to wall time. Copies share their
// offset; the zero Clock treats boot time as Unix time (tests).
type Clock struct{ s *shared }

type shared struct {
	offset   atomic.Int64 // wall ns - boot ns, at the last sample
	lastBoot atomic.Int64 // boot ns of the last sample
}

// New samples both clocks.
func New() Clock {
	c := Clock{s: new(shared)}
	c.Sync()
	return c
}

// Sync samples the offset between the clocks now: for a conversion of old
// timestamps (a table's FIN times) that a reader compares with its own
// wall clock.
func (c Clock) Sync() {
	if c.s == nil {
		return
	}
	boot := Now()
	wall := time.Now().UnixNano()
	c.s.offset.Store(wall - boot)
	c.s.lastBoot.Store(boot)
}

// Now returns the current CLOCK_BOOTTIME in nanoseconds, the clock of
// bpf_ktime_get_boot_ns.
func Now() int64 {
	var ts unix.Timespec
	// CLOCK_BOOTTIME cannot fail on any kernel tcptrace supports.
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return ts.Nano()
}

// Wall converts a boot-time timestamp to wall-clock time.
func (c Clock) Wall(bootNS int64) time.Time {
	if c.s == nil {
		return time.Unix(0, bootNS)
	}
	if bootNS-c.s.lastBoot.Load() > resyncEvery {
		c.Sync()
	}
	return time.Unix(0, bootNS+c.s.offset.Load())
}
